#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (built as a wheel) against an
# emulator process, then the emulator's dashboard in chromium (skipped, with a message, where
# chromium is not installed). Needs a Rust toolchain and Python 3.8+ with venv; fetches maturin,
# pytest and selenium from PyPI into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features
# That run built the emulator and the test helpers (the dashboard's device) in target/debug, as the
# integration tests use them: the Python suite and the browser test take them as they are instead of
# building them again with other features.
export SPOTFLOW_EMULATOR_BIN="$PWD/target/debug/spotflow-emulator"
export SPOTFLOW_DASHBOARD_DEVICE="$PWD/target/debug/dashboard-device"
bash scripts/python-tests.sh
bash scripts/browser-test.sh
