#!/usr/bin/env bash
# Builds the `spotflow-device` wheel we would ship (abi3, Python 3.8+, manylinux2014 x86_64) with
# maturin and zig, checks its tag (auditwheel) and its type stubs (mypy's stubtest), installs it
# into target/venv and runs the pytest suite against the emulator (a process on 127.0.0.1; its MQTT
# listener takes port 8883, as the reference API has no port option). The `brotli` module (Google's
# decoder) checks our Brotli payloads with an independent implementation.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SPOTFLOW_VENV:-target/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" "pytest>=7" "brotli>=1.1" "mypy>=1.18" \
  "ziglang>=0.13" "auditwheel>=6"
rm -f target/wheels/spotflow_device-*.whl
# The wheel we would ship: manylinux2014 (glibc 2.17), linked by zig (from PyPI) against glibc
# 2.17's symbols, so that it installs on older Linux systems than the build machine's.
PATH="$(cd "$venv/bin" && pwd):$PATH" "$venv/bin/maturin" build --release -m spotflow-python/Cargo.toml -o target/wheels \
  --interpreter "$venv/bin/python" --zig --compatibility manylinux2014
wheel="$(ls target/wheels/spotflow_device-*.whl)"
# auditwheel confirms the tag the wheel claims, from the symbols its library needs.
"$venv/bin/auditwheel" show "$wheel" | tee target/wheels/auditwheel.txt
grep -q '"manylinux_2_17_x86_64"' target/wheels/auditwheel.txt || { echo "the wheel is not manylinux_2_17_x86_64" >&2; exit 1; }
echo "highest glibc symbol the wheel needs: $(bash scripts/wheel-glibc.sh "$wheel")"

"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
# The type stubs against the installed module (as pydantic-core checks its own): every class,
# function and signature the module has is in the stub, as it is.
"$venv/bin/python" -m mypy.stubtest spotflow_device --allowlist spotflow-python/stubtest-allowlist.txt
# The emulator process: SPOTFLOW_EMULATOR_BIN when given (scripts/test.sh gives the one its
# `cargo test` built), else built here.
if [ -z "${SPOTFLOW_EMULATOR_BIN:-}" ]; then
  cargo build -p spotflow-emulator
  # Where cargo put it: CARGO_TARGET_DIR (or the configuration's target directory) is honoured.
  export SPOTFLOW_EMULATOR_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/spotflow-emulator"
fi
"$venv/bin/python" -m pytest spotflow-python/tests -q "$@"
