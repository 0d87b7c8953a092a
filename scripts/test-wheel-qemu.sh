#!/usr/bin/env bash
# Runs a device CPU's wheel where it would run: installs it (unpacked on PYTHONPATH) for the
# Python 3 of a Debian bookworm tree of that architecture (made with mmdebstrap from Debian's
# packages, kept in target/debian-ARCH), under qemu-user, and runs
# spotflow-python/tests/test_wheel_on_device_cpu.py: the reference's Basic Usage sending a few
# hundred messages to the emulator on this machine, counted there.
# Usage: scripts/test-wheel-qemu.sh aarch64|armv7l WHEEL
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "test-wheel-qemu: $*" >&2; exit 1; }
case "${1:-}" in
  aarch64) debian=arm64 qemu=qemu-aarch64 ;;
  armv7l) debian=armhf qemu=qemu-arm ;;
  *) fail "usage: $0 aarch64|armv7l WHEEL" ;;
esac
wheel="${2:-}"
[ -f "$wheel" ] || fail "no such wheel: $wheel"
command -v "$qemu" >/dev/null || fail "$qemu is missing: apt-get install qemu-user"
command -v mmdebstrap >/dev/null || fail "mmdebstrap is missing: apt-get install mmdebstrap"
root="$PWD/target/debian-$debian"
if [ ! -x "$root/usr/bin/python3" ]; then
  rm -rf "$root"
  # The packages' files only (no maintainer scripts, which would need the foreign CPU).
  mmdebstrap --variant=extract --arch="$debian" --include=python3 bookworm "$root" \
    || fail "mmdebstrap could not make a $debian tree (see its message above)"
fi
venv="${SPOTFLOW_VENV:-target/venv}"
[ -x "$venv/bin/python" ] || fail "$venv has no Python: run scripts/python-tests.sh first (it makes the venv)"
export SPOTFLOW_DEVICE_PYTHON="$qemu -L $root $root/usr/bin/python3"
export SPOTFLOW_DEVICE_WHEEL="$(realpath "$wheel")"
export SPOTFLOW_DEVICE_MACHINE="$1"
"$venv/bin/python" -m pytest spotflow-python/tests/test_wheel_on_device_cpu.py -q -s
