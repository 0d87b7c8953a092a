#!/usr/bin/env bash
# Re-records the official SDK's traffic for the golden scenario (interop/golden/scenario.txt) into
# interop/golden/official-0.8.1.jsonl: builds the interop harness (the official spotflow 0.8.1
# crate), runs the scenario against a recording emulator on ports 443 and 8883 (root is needed for
# 443: the official SDK uploads large messages to port 443 of the hub host), and writes what the
# emulator saw. Review the diff, then commit it; `cargo test -p spotflow-device --test golden`
# compares our SDK with it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --manifest-path interop/official-sdk/Cargo.toml --target-dir target/interop
SPOTFLOW_OFFICIAL_HARNESS="$PWD/target/interop/release/official-sdk-harness" SPOTFLOW_RECORD_GOLDEN=1 \
  cargo test -p spotflow-device --all-features --test golden the_official_sdk_still_records_the_golden_traffic \
  -- --ignored --exact --nocapture
git --no-pager diff --stat -- interop/golden
