#!/usr/bin/env bash
# Puts every artifact of a release in dist/, with SHA256SUMS:
#   dist/crates/   the published crates (cargo package, each built from its tarball)
#   dist/wheels/   the Python wheels of every Linux platform (scripts/build-wheels.sh)
#   dist/spotflow-emulator-<target>   the emulator as one static file (musl) for x86_64 and aarch64
#   dist/spotflow-c-<version>-<target>.tar.gz   the C library for x86_64 and aarch64
#                  (scripts/c-package.sh; unpacked beside it)
# Needs: rustup, Python 3 with venv (maturin, zig and auditwheel come from PyPI), cargo-zigbuild
# (`cargo install cargo-zigbuild --locked`). A missing target or tool stops it with the reason.
# Usage: scripts/release.sh [--emulators-only]
# SPOTFLOW_EMULATOR_PROFILE picks the Cargo profile of the emulators (default release; CI checks
# them built with `dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "release: $*" >&2; exit 1; }
only_emulators=false
case "${1:-}" in
  "") ;;
  --emulators-only) only_emulators=true ;;
  *) fail "usage: $0 [--emulators-only]" ;;
esac
command -v rustup >/dev/null || fail "rustup is needed"
cargo zigbuild --help >/dev/null 2>&1 || fail "cargo-zigbuild is needed: cargo install cargo-zigbuild --locked"
venv="${SPOTFLOW_RELEASE_VENV:-target/venv-release}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || fail "cannot create the virtual environment $venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "ziglang>=0.13" || fail "cannot install ziglang from PyPI"
# cargo-zigbuild finds zig through `python3 -m ziglang`.
export PATH="$(cd "$venv/bin" && pwd):$PATH"
mkdir -p dist
profile="${SPOTFLOW_EMULATOR_PROFILE:-release}"
profile_dir="$profile"
[ "$profile" != dev ] || profile_dir=debug

if ! $only_emulators; then
  rm -rf dist/crates
  mkdir -p dist/crates
  cargo package -p spotflow-core -p spotflow-transport-mqtt -p spotflow-transport-ws -p spotflow-store-sqlite \
    -p spotflow-store-sled -p spotflow-device -p spotflow-emulator || fail "cargo package failed"
  cp target/package/spotflow-*-"$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml)".crate dist/crates/
  SPOTFLOW_WHEEL_DIR=dist/wheels bash scripts/build-wheels.sh || fail "the wheels did not build"
  for cpu in x86_64 aarch64; do
    bash scripts/c-package.sh "$cpu" || fail "the C package for $cpu did not build"
  done
fi

for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || fail "rustup cannot add the target $target"
  fi
  echo "== spotflow-emulator for $target"
  cargo zigbuild --profile "$profile" -p spotflow-emulator --bin spotflow-emulator --target "$target" \
    || fail "the emulator did not build for $target"
  cp "${CARGO_TARGET_DIR:-target}/$target/$profile_dir/spotflow-emulator" "dist/spotflow-emulator-$target"
  description="$(file -b "dist/spotflow-emulator-$target")"
  echo "-- dist/spotflow-emulator-$target: $(stat -c %s "dist/spotflow-emulator-$target") bytes, $description"
  grep -q "statically linked\|static-pie linked" <<<"$description" || fail "dist/spotflow-emulator-$target is not static"
done

(cd dist && find . -type f ! -name SHA256SUMS ! -name '*.auditwheel.txt' ! -path './spotflow-c-*/*' -printf '%P\n' | sort | xargs sha256sum > SHA256SUMS)
echo "== dist/SHA256SUMS"
cat dist/SHA256SUMS
