#!/usr/bin/env bash
# The C library as a package for a device CPU, in dist/spotflow-c-<version>-<target>/ and as a
# .tar.gz beside it:
#   include/spotflow.h
#   lib/libspotflow.so, lib/libspotflow.a (stripped of debug information)
#   lib/cmake/spotflow/ (find_package(spotflow): spotflow::spotflow, spotflow::spotflow_static)
#   examples/ (get_started.c, get_started.cpp, Makefile, CMakeLists.txt), the licences
# Usage: scripts/c-package.sh [x86_64|aarch64|armv7]   (default: this machine, x86_64)
# SPOTFLOW_C_LIB_DIR takes the libraries from that folder instead of building them (CI passes
# the release build it has).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "c-package: $*" >&2; exit 1; }
case "${1:-x86_64}" in
  x86_64) target=x86_64-unknown-linux-gnu strip=strip ;;
  aarch64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu strip=aarch64-linux-gnu-strip ;;
  armv7) target=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf strip=arm-linux-gnueabihf-strip ;;
  *) fail "usage: $0 [x86_64|aarch64|armv7]" ;;
esac
command -v "$strip" >/dev/null || fail "$strip is missing (binutils, or the cross toolchain gcc-$gnu)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml)"
if [ -n "${SPOTFLOW_C_LIB_DIR:-}" ]; then
  lib="$SPOTFLOW_C_LIB_DIR"
elif [ "$target" = x86_64-unknown-linux-gnu ]; then
  cargo build --release -p spotflow-c || fail "the library did not build"
  lib=target/release
else
  rustup target list --installed | grep -qx "$target" || fail "the Rust target $target is missing: rustup target add $target"
  command -v "$gnu-gcc" >/dev/null || fail "$gnu-gcc is missing: apt-get install gcc-$gnu"
  upper="$(echo "$target" | tr 'a-z-' 'A-Z_')"
  export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" "CC_${target//-/_}=$gnu-gcc"
  cargo build --release --target "$target" -p spotflow-c || fail "the library did not build for $target"
  lib="target/$target/release"
fi
for file in libspotflow.so libspotflow.a; do
  [ -f "$lib/$file" ] || fail "no $lib/$file"
done
name="spotflow-c-$version-$target"
out="dist/$name"
rm -rf "$out" "$out.tar.gz"
mkdir -p "$out/include" "$out/lib/cmake/spotflow" "$out/examples"
cp spotflow-c/include/spotflow.h "$out/include/"
"$strip" --strip-unneeded -o "$out/lib/libspotflow.so" "$lib/libspotflow.so"
"$strip" --strip-debug -o "$out/lib/libspotflow.a" "$lib/libspotflow.a"
cp spotflow-c/cmake/spotflowConfig.cmake "$out/lib/cmake/spotflow/"
IFS=. read -r major minor _ <<<"$version"
sed -e "s/@VERSION@/$version/" -e "s/@MAJOR@/$major/" -e "s/@MINOR@/$minor/" \
  spotflow-c/cmake/spotflowConfigVersion.cmake.in > "$out/lib/cmake/spotflow/spotflowConfigVersion.cmake"
cp examples/c/get_started.c examples/c/get_started.cpp examples/c/Makefile examples/c/CMakeLists.txt "$out/examples/"
cp LICENSE-MIT LICENSE-APACHE "$out/"
tar czf "$out.tar.gz" -C dist "$name"
echo "-- $out: libspotflow.so $(stat -c %s "$out/lib/libspotflow.so") bytes, libspotflow.a $(stat -c %s "$out/lib/libspotflow.a") bytes (stripped); $(stat -c %s "$out.tar.gz") bytes as .tar.gz"
