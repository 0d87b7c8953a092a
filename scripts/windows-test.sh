#!/usr/bin/env bash
# The SDK on Windows, cross-built here for x86_64-pc-windows-gnu with Debian's mingw-w64 and run
# under wine (Debian 12's wine 8.0): no Windows machine needed. In order:
#   1. the store conformance suites (memory, SQLite, sled) and the core's tests (free space, the
#      owner-only files' access control lists);
#   2. the store crash test, the child killed with TerminateProcess (SPOTFLOW_WINDOWS_CRASH_CYCLES
#      cycles per backend, 5 by default), and the device killed the same way while it sends to the
#      emulator (every acknowledged message stored once);
#   3. the quick start (quickstart.exe: the emulator embedded, 5,000 messages) to completion;
#   4. the C interface's test program, built by mingw-w64 against spotflow.dll, against the emulator
#      (scripts/cross-c-test.sh windows);
#   5. spotflow-emulator.exe as a process, the Linux quick start's device against it
#      (scripts/static-emulator-check.sh windows);
#   6. spotflow-fleet.exe: a gateway of 20 devices (one shared SQLite store), every message stored;
#   7. the Python package's abi3 wheel for win_amd64, checked structurally: no Windows CPython can
#      be had from the registries this machine reaches (PyPI, Debian), so its .pyd is not imported;
#      instead it must import python3.dll (the stable ABI) and Windows' own DLLs only, and export
#      PyInit_spotflow_device.
# What does not run under wine: the tests that mount a full disk (tmpfs in a user namespace), send
# Unix signals or read /proc, the browser test, and the benchmarks (BENCHMARKS.md has the CPU per
# message under wine, indicative only: wine is not Windows).
#
# Wine 8.0 lacks ProcessPrng, which Rust's standard library imports: scripts/windows/wine-run.sh
# puts a test-only shim beside each program (never shipped).
#
# Usage: scripts/windows-test.sh [--build-only]
#   --build-only  builds everything (CI runs that in the background) and stops.
# SPOTFLOW_WHEEL_PROFILE: the wheel's Cargo profile (default dev, as CI's ARM wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "windows-test: $*" >&2; exit 1; }
target=x86_64-pc-windows-gnu
target_dir=target/windows
bin="$target_dir/$target/debug"
rustup target list --installed | grep -qx "$target" || rustup target add "$target" \
  || fail "the Rust target $target is missing: rustup target add $target"
command -v x86_64-w64-mingw32-gcc >/dev/null || fail "x86_64-w64-mingw32-gcc is missing: apt-get install gcc-mingw-w64-x86-64"
[ -x /usr/lib/wine/wine64 ] || fail "wine is missing: apt-get install wine wine64"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/scripts/windows/wine-run.sh"
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
stamp() { echo "-- [$(date +%T)] $*"; }

# What the tests run, each list built in one cargo command (shared dependencies).
# (Those that need what only Unix has are compiled out there: `#![cfg(unix)]`.)
tests=(-p spotflow-core --features spotflow-core/testkit -p spotflow-store-sqlite -p spotflow-store-sled
  -p spotflow-store-tests --tests)
programs=(-p spotflow-c -p spotflow-emulator -p spotflow-fleet -p spotflow-examples --example quickstart --bins --lib)
build() {
  stamp "building for $target"
  cargo test --target "$target" --target-dir "$target_dir" --no-run "${tests[@]}"
  cargo build --target "$target" --target-dir "$target_dir" "${programs[@]}"
  stamp "building the win_amd64 wheel"
  local venv="${SPOTFLOW_RELEASE_VENV:-target/venv-release}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2"
  rm -rf "$target_dir/wheels"
  "$venv/bin/maturin" build -q -m spotflow-python/Cargo.toml --target "$target" --target-dir "$target_dir" \
    --profile "${SPOTFLOW_WHEEL_PROFILE:-dev}" --out "$target_dir/wheels"
}
build
[ "${1:-}" = --build-only ] && exit 0

# One wine prefix for the run (wine makes it at the first program), removed at the end.
mkdir -p target/tmp
WINEPREFIX="$(mktemp -d "$PWD/target/tmp/wineprefix.XXXXXX")"
export WINEPREFIX
trap 'wineserver -k 2>/dev/null || true; rm -rf "$WINEPREFIX"' EXIT

stamp "1-2. the store conformance suites, the core's tests and the crash test (TerminateProcess)"
log="$WINEPREFIX.tests.log"
if ! SPOTFLOW_CRASH_CYCLES="${SPOTFLOW_WINDOWS_CRASH_CYCLES:-5}" \
  cargo test --target "$target" --target-dir "$target_dir" "${tests[@]}" -- --nocapture > "$log" 2>&1; then
  grep -E "^test .*FAILED|panicked" -A5 "$log" | head -60
  fail "tests failed under wine (the log: $log)"
fi
grep -E "^test result|cycles, " "$log"
rm -f "$log"

stamp "3. the quick start: quickstart.exe"
out="$(timeout 300 scripts/windows/wine-run.sh "$bin/examples/quickstart.exe" 2>&1 | tr '\r' '\n')" \
  || { echo "$out" | tail -20; fail "quickstart.exe failed"; }
grep -E "^All .* acknowledged|^The platform stored" <<<"$out"
grep -q "^The platform stored 5001 messages" <<<"$out" || { echo "$out" | tail -20; fail "quickstart.exe: not every message stored"; }

stamp "4. the C interface: api_test.exe against spotflow.dll"
bash scripts/cross-c-test.sh windows | tail -n 6

stamp "5. spotflow-emulator.exe, the Linux quick start's device against it"
[ -x target/debug/examples/quickstart ] || cargo build -q --example quickstart
bash scripts/static-emulator-check.sh windows "$bin/spotflow-emulator.exe" target/debug/examples/quickstart

stamp "6. spotflow-fleet.exe: 20 devices of one gateway store, 5 msg/s each for 5 s"
out="$(timeout 300 scripts/windows/wine-run.sh "$bin/spotflow-fleet.exe" --devices 20 --rate 5 --duration 5 \
  --store gateway --progress-every 60 2>&1)" || { echo "$out" | tail -20; fail "spotflow-fleet.exe failed"; }
grep -E "devices started|messages delivered|stored by the platform" <<<"$out"
grep -q "none lost" <<<"$out" || fail "spotflow-fleet.exe: the platform did not store every message"

stamp "7. the win_amd64 wheel, checked structurally"
wheel="$(ls "$target_dir"/wheels/spotflow_device-*-cp38-abi3-win_amd64.whl)"
dir="$(mktemp -d "$PWD/target/tmp/wheel.XXXXXX")"
python3 -m zipfile -e "$wheel" "$dir"
pyd="$dir/spotflow_device/spotflow_device.pyd"
[ -f "$pyd" ] || fail "$wheel has no spotflow_device/spotflow_device.pyd"
imports="$(x86_64-w64-mingw32-objdump -p "$pyd" | sed -n 's/^\tDLL Name: //p' | tr 'A-Z' 'a-z' | sort -u)"
echo "-- $(basename "$wheel"): $(stat -c %s "$wheel") bytes; the .pyd imports: $(echo $imports)"
grep -qx python3.dll <<<"$imports" || fail "the .pyd does not import python3.dll (the stable ABI)"
# Windows' own DLLs (and its API sets); anything else would have to be shipped in the wheel.
others="$(grep -vxE 'python3\.dll|kernel32\.dll|ntdll\.dll|msvcrt\.dll|advapi32\.dll|userenv\.dll|ws2_32\.dll|bcrypt\.dll|bcryptprimitives\.dll|crypt32\.dll|ncrypt\.dll|secur32\.dll|api-ms-win-[a-z0-9-]+\.dll' <<<"$imports" || true)"
[ -z "$others" ] || fail "the .pyd imports DLLs that are neither Windows' nor python3.dll: $others"
exports="$(x86_64-w64-mingw32-objdump -p "$pyd" | sed -n '/Ordinal\/Name Pointer/,/^$/p')"
grep -q "PyInit_spotflow_device" <<<"$exports" || fail "the .pyd does not export PyInit_spotflow_device"
rm -rf "$dir"
stamp "all Windows checks passed"
