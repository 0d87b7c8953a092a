#!/usr/bin/env bash
# Every device-CPU check, for a release (CI runs the aarch64 wheel and the aarch64 C library on
# every change; this runs the rest too): the quick start cross-built for aarch64 and armv7 and run
# under qemu-user, the C library's API test on both, the aarch64 and armv7l wheels in Debian trees
# under qemu-user, and the static emulators (x86_64, aarch64) with the quick start's device
# against each. Needs what .ci/run installs (cross compilers, qemu-user, mmdebstrap, zig from
# PyPI, cargo-zigbuild); about 25 minutes of both cores on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
timed() {
  local start=$SECONDS
  "$@"
  echo "-- $* : $((SECONDS - start)) s"
}
for cpu in aarch64 armv7; do
  timed bash scripts/cross-quickstart.sh "$cpu"
  timed bash scripts/cross-c-test.sh "$cpu"
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/devices}"
timed env SPOTFLOW_WHEEL_PROFILE=dev bash scripts/build-wheels.sh aarch64-manylinux armv7l-manylinux
cargo build -p spotflow-emulator
cargo build --example quickstart
debug="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"
export SPOTFLOW_EMULATOR_BIN="$debug/spotflow-emulator"
timed bash scripts/test-wheel-qemu.sh aarch64 dist/wheels/spotflow_device-*manylinux2014_aarch64*.whl
timed bash scripts/test-wheel-qemu.sh armv7l dist/wheels/spotflow_device-*manylinux2014_armv7l*.whl
timed env SPOTFLOW_EMULATOR_PROFILE=dev bash scripts/release.sh --emulators-only
timed bash scripts/static-emulator-check.sh x86_64 dist/spotflow-emulator-x86_64-unknown-linux-musl "$debug/examples/quickstart"
timed bash scripts/static-emulator-check.sh aarch64 dist/spotflow-emulator-aarch64-unknown-linux-musl "$debug/examples/quickstart"
echo "every device-CPU check passed"
