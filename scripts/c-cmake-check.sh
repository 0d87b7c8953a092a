#!/usr/bin/env bash
# The C package as a CMake project uses it: examples/c/CMakeLists.txt configured with
# find_package(spotflow) against PACKAGE (made by scripts/c-package.sh), built (shared, static
# and C++; -Werror), and each program run against an emulator process: every message stored.
# Usage: scripts/c-cmake-check.sh PACKAGE
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "c-cmake-check: $*" >&2; exit 1; }
package="${1:-}"
[ -f "$package/lib/cmake/spotflow/spotflowConfig.cmake" ] || fail "usage: $0 PACKAGE (dist/spotflow-c-<version>-<target>)"
command -v cmake >/dev/null || fail "cmake is missing: apt-get install cmake"
package="$(realpath "$package")"
mkdir -p target/tmp
dir="$(mktemp -d "$PWD/target/tmp/c-cmake.XXXXXX")"
# shellcheck source=scripts/emulator-process.sh
source scripts/emulator-process.sh
trap 'stop_emulator; rm -rf "$dir"' EXIT
cmake -S "$package/examples" -B "$dir/build" -DCMAKE_PREFIX_PATH="$package" -DCMAKE_BUILD_TYPE=Release > "$dir/cmake.log" \
  || { cat "$dir/cmake.log"; fail "cmake could not configure the examples"; }
cmake --build "$dir/build" > "$dir/build.log" 2>&1 || { cat "$dir/build.log"; fail "the examples did not build"; }
[ -x target/debug/spotflow-emulator ] || cargo build -p spotflow-emulator
start_emulator "$dir" target/debug/spotflow-emulator
export SPOTFLOW_INSTANCE="localhost:$HTTPS_PORT" SPOTFLOW_PROVISIONING_TOKEN="$PROVISIONING_TOKEN" \
  SPOTFLOW_MQTT_PORT="$MQTTS_PORT" SSL_CERT_FILE="$dir/data/ca.pem" SPOTFLOW_MESSAGES=10 SPOTFLOW_INTERVAL_MS=0
for program in get_started get_started_static get_started_cpp; do
  mkdir -p "$dir/run-$program"
  (cd "$dir/run-$program" && timeout 120 "$dir/build/$program") > "$dir/$program.out" \
    || { cat "$dir/$program.out"; fail "$program failed"; }
  grep -q "Sent 10 messages" "$dir/$program.out" || { cat "$dir/$program.out"; fail "$program did not send"; }
  echo "-- $program (CMake, find_package(spotflow)): $(grep 'Sent 10' "$dir/$program.out")"
done
# get_started and get_started_static are the same device (my-device), run twice: 20 and 10.
stored="$(target/debug/spotflow-emulator messages tail "${ADMIN[@]}" | wc -l)"
echo "-- the emulator stored $stored messages"
[ "$stored" -eq 30 ] || fail "the emulator stored $stored messages, not 30"
