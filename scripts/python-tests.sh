#!/usr/bin/env bash
# Builds the `spotflow-device` wheel (abi3, Python 3.8+) with maturin, installs it into
# target/venv and runs the pytest suite against the emulator (a process on 127.0.0.1; its MQTT
# listener takes port 8883, as the reference API has no port option). The `brotli` module (Google's
# decoder) checks our Brotli payloads with an independent implementation.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SPOTFLOW_VENV:-target/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" "pytest>=7" "brotli>=1.1" "mypy>=1.18"
rm -f target/wheels/spotflow_device-*.whl
"$venv/bin/maturin" build --release -m spotflow-python/Cargo.toml -o target/wheels --interpreter "$venv/bin/python"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/spotflow_device-*.whl
# The type stubs against the installed module (as pydantic-core checks its own): every class,
# function and signature the module has is in the stub, as it is.
"$venv/bin/python" -m mypy.stubtest spotflow_device --allowlist spotflow-python/stubtest-allowlist.txt
# The emulator process: SPOTFLOW_EMULATOR_BIN when given (scripts/test.sh gives the one its
# `cargo test` built), else built here.
if [ -z "${SPOTFLOW_EMULATOR_BIN:-}" ]; then
  cargo build -p spotflow-emulator
  export SPOTFLOW_EMULATOR_BIN="$PWD/target/debug/spotflow-emulator"
fi
"$venv/bin/python" -m pytest spotflow-python/tests -q "$@"
