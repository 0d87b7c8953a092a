#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (built as a wheel) against an
# emulator process, then the emulator's dashboard in chromium (skipped, with a message, where
# chromium is not installed). Needs a Rust toolchain and Python 3.8+ with venv; fetches maturin,
# pytest and selenium from PyPI into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features
# The emulator and the dashboard's device, with the features and artifacts that run just used: the
# Python suite and the browser test take them as they are instead of building them again with
# other features.
cargo build --workspace --all-features --bin spotflow-emulator --bin dashboard-device
# Cargo's target directory, CARGO_TARGET_DIR included.
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export SPOTFLOW_EMULATOR_BIN="$target_dir/debug/spotflow-emulator"
export SPOTFLOW_DASHBOARD_DEVICE="$target_dir/debug/dashboard-device"
bash scripts/python-tests.sh
bash scripts/browser-test.sh
