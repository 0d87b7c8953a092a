#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (built as a wheel) against an
# emulator process, then the emulator's dashboard in chromium (skipped, with a message, where
# chromium is not installed). Needs a Rust toolchain and Python 3.8+ with venv; fetches maturin,
# pytest and selenium from PyPI into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features
bash scripts/python-tests.sh
bash scripts/browser-test.sh
