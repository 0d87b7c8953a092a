#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (built as a wheel) against an
# emulator process. Needs a Rust toolchain and Python 3.8+ with venv; fetches maturin and pytest
# from PyPI into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features
bash scripts/python-tests.sh
