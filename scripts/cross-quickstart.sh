#!/usr/bin/env bash
# Cross-builds the quick start (the facade with its default features and the emulator embedded)
# for a device CPU and runs it under qemu-user: both ends on that CPU, on this machine.
# Usage: scripts/cross-quickstart.sh aarch64|armv7
# Needs: `rustup target add` of the target, Debian's cross compiler and C library
# (gcc-aarch64-linux-gnu libc6-dev-arm64-cross, or gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
# and qemu-user. A missing one stops the script with what to install, never a skipped check.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  aarch64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu qemu=qemu-aarch64 ;;
  armv7) target=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
  *) echo "usage: $0 aarch64|armv7" >&2; exit 2 ;;
esac
rustup target list --installed | grep -qx "$target" || { echo "the Rust target $target is missing: rustup target add $target" >&2; exit 1; }
command -v "$gnu-gcc" >/dev/null || { echo "$gnu-gcc is missing: apt-get install gcc-$gnu (and its libc6-dev cross package)" >&2; exit 1; }
command -v "$qemu" >/dev/null || { echo "$qemu is missing: apt-get install qemu-user" >&2; exit 1; }
# The linker, and the C compiler of the C dependencies (ring, the bundled SQLite, zstd).
upper="$(echo "$target" | tr 'a-z-' 'A-Z_')"
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export "CC_${target//-/_}=$gnu-gcc"
cargo build --target "$target" --example quickstart
binary="target/$target/debug/examples/quickstart"
file "$binary" 2>/dev/null || true
# The quick start checks what the platform stored and fails otherwise.
timeout 600 "$qemu" -L "/usr/$gnu" "$binary"
