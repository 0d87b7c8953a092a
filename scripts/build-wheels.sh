#!/usr/bin/env bash
# Builds the Python package's wheels (abi3, CPython 3.8+) for the Linux platforms we ship, with
# maturin and zig (both from PyPI, in target/venv-release), into dist/wheels, and checks each:
# auditwheel confirms the platform tag it claims, and the highest glibc symbol its library
# needs is printed.
#
# Usage: scripts/build-wheels.sh [PLATFORM...]
#   PLATFORM: x86_64-manylinux aarch64-manylinux armv7l-manylinux x86_64-musllinux
#             aarch64-musllinux (default: all five)
# A missing Rust target is added with rustup; if that fails (or any tool is missing) the script
# stops with the reason: a platform is never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${SPOTFLOW_WHEEL_DIR:-dist/wheels}"
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
  || fail "cannot install maturin, ziglang and auditwheel from PyPI"
export PATH="$(cd "$venv/bin" && pwd):$PATH"
mkdir -p "$out"

for platform in "${platforms[@]}"; do
  case "$platform" in
    x86_64-manylinux) target=x86_64-unknown-linux-gnu compat=manylinux2014 tag=manylinux_2_17_x86_64 ;;
    aarch64-manylinux) target=aarch64-unknown-linux-gnu compat=manylinux2014 tag=manylinux_2_17_aarch64 ;;
    armv7l-manylinux) target=armv7-unknown-linux-gnueabihf compat=manylinux2014 tag=manylinux_2_17_armv7l ;;
    x86_64-musllinux) target=x86_64-unknown-linux-musl compat=musllinux_1_2 tag=musllinux_1_2_x86_64 ;;
    aarch64-musllinux) target=aarch64-unknown-linux-musl compat=musllinux_1_2 tag=musllinux_1_2_aarch64 ;;
    *) fail "unknown platform $platform (x86_64-manylinux aarch64-manylinux armv7l-manylinux x86_64-musllinux aarch64-musllinux)" ;;
  esac
  echo "== $platform: $target, $compat"
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || fail "rustup cannot add the target $target (see its message above)"
  fi
  rm -f "$out"/spotflow_device-*-"$tag"*.whl "$out"/spotflow_device-*."$tag".whl
  "$venv/bin/maturin" build --release -m spotflow-python/Cargo.toml -o "$out" --target "$target" --zig \
    --compatibility "$compat" --interpreter "$venv/bin/python" || fail "the $platform wheel did not build"
  wheel="$(ls -t "$out"/spotflow_device-*.whl | head -n 1)"
  "$venv/bin/auditwheel" show "$wheel" > "$wheel.auditwheel.txt" || fail "auditwheel cannot read $wheel"
  grep -q "\"$tag\"" "$wheel.auditwheel.txt" || { cat "$wheel.auditwheel.txt"; fail "$wheel is not $tag"; }
  echo "-- $(basename "$wheel"): $tag (auditwheel), $(stat -c %s "$wheel") bytes, highest glibc symbol: $(bash scripts/wheel-glibc.sh "$wheel")"
done
