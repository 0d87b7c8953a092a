#!/usr/bin/env bash
# The emulator's dashboard in a real browser (scripts/browser_test.py): Debian's chromium and
# chromedriver (`apt-get install chromium chromium-driver`) driven by Selenium from PyPI in
# target/venv; nothing downloads a browser. Screenshots go to target/browser/. Without chromium
# the test is skipped with a message, unless SPOTFLOW_BROWSER_TEST=required (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
chromium="${CHROMIUM:-/usr/bin/chromium}"
driver="${CHROMEDRIVER:-/usr/bin/chromedriver}"
if [ ! -x "$chromium" ] || [ ! -x "$driver" ]; then
  if [ "${SPOTFLOW_BROWSER_TEST:-}" = required ]; then
    echo "browser test: $chromium or $driver is missing (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
  echo "browser test skipped: install chromium and chromium-driver (Debian packages) to run it"
  exit 0
fi
venv="${SPOTFLOW_VENV:-target/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "selenium>=4.20,<5"
# The emulator and the dashboard's device: as given (scripts/test.sh gives those its `cargo test`
# built), else built here.
if [ -z "${SPOTFLOW_EMULATOR_BIN:-}" ] || [ -z "${SPOTFLOW_DASHBOARD_DEVICE:-}" ]; then
  cargo build -q -p spotflow-emulator -p spotflow-bench --bin spotflow-emulator --bin dashboard-device
  # Where cargo put them: CARGO_TARGET_DIR (or the configuration's target directory) is honoured.
  target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  export SPOTFLOW_EMULATOR_BIN="$target_dir/debug/spotflow-emulator"
  export SPOTFLOW_DASHBOARD_DEVICE="$target_dir/debug/dashboard-device"
fi
timeout 300 "$venv/bin/python" scripts/browser_test.py
