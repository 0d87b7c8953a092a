#!/usr/bin/env bash
# The C library on a device CPU: cross-builds libspotflow.a for aarch64 (or armv7) with Debian's
# cross compiler, builds spotflow-c/tests/c/api_test.c with it, and runs that under qemu-user
# against the emulator process of this machine (target/debug/spotflow-emulator, built if missing).
# On Windows (x86_64-pc-windows-gnu): spotflow.dll with its import library, built by mingw-w64,
# api_test.exe linked against the DLL, run under wine (scripts/windows/wine-run.sh).
# Usage: scripts/cross-c-test.sh aarch64|armv7|windows
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "cross-c-test: $*" >&2; exit 1; }
case "${1:-}" in
  aarch64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu qemu=qemu-aarch64 ;;
  armv7) target=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
  windows) target=x86_64-pc-windows-gnu gnu=x86_64-w64-mingw32 qemu=/usr/lib/wine/wine64 ;;
  *) fail "usage: $0 aarch64|armv7|windows" ;;
esac
# The Windows build has its own target directory (scripts/windows-test.sh shares it).
target_dir=target
[ "$1" = windows ] && target_dir=target/windows
rustup target list --installed | grep -qx "$target" || fail "the Rust target $target is missing: rustup target add $target"
command -v "$gnu-gcc" >/dev/null || fail "$gnu-gcc is missing: apt-get install gcc-$gnu (and its libc6-dev cross package)"
command -v "$qemu" >/dev/null || fail "$qemu is missing: apt-get install qemu-user"
upper="$(echo "$target" | tr 'a-z-' 'A-Z_')"
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export "CC_${target//-/_}=$gnu-gcc"
cargo build --target "$target" --target-dir "$target_dir" -p spotflow-c
[ -x target/debug/spotflow-emulator ] || cargo build -p spotflow-emulator

mkdir -p target/tmp
dir="$(mktemp -d "$PWD/target/tmp/cross-c.XXXXXX")"
# shellcheck source=scripts/emulator-process.sh
source scripts/emulator-process.sh
trap 'stop_emulator; rm -rf "$dir"' EXIT
if [ "$1" = windows ]; then
  # Against the DLL (its import library), with the DLL beside the program; winpthreads linked in.
  "$gnu-gcc" -std=c99 -O1 -g -Wall -Wextra -Wpedantic -Werror -I spotflow-c/include -o "$dir/api_test.exe" \
    spotflow-c/tests/c/api_test.c "$target_dir/$target/debug/libspotflow.dll.a" -static -lpthread
  cp "$target_dir/$target/debug/spotflow.dll" "$dir/"
  # The static library links into the same program too (with the Windows libraries it needs);
  # the DLL's program is the one run.
  "$gnu-gcc" -std=c99 -O1 -Wall -Werror -I spotflow-c/include -o "$dir/api_test_static.exe" spotflow-c/tests/c/api_test.c \
    "$target_dir/$target/debug/libspotflow.a" -static -lpthread -lws2_32 -luserenv -lbcrypt -lntdll -ladvapi32 \
    -lcrypt32 -lncrypt -lsecur32
  echo "-- api_test_static.exe linked with libspotflow.a: $(stat -c %s "$dir/api_test_static.exe") bytes"
  run=("$PWD/scripts/windows/wine-run.sh" "$dir/api_test.exe")
  file "$dir/api_test.exe" | sed "s|$dir/||"
  "$gnu-objdump" -p "$dir/api_test.exe" | sed -n 's/^\tDLL Name: /-- imports /p'
else
  "$gnu-gcc" -std=c99 -O1 -g -Wall -Wextra -Wpedantic -Werror -I spotflow-c/include -o "$dir/api_test" \
    spotflow-c/tests/c/api_test.c "target/$target/debug/libspotflow.a" -lpthread -lm -ldl
  run=("$qemu" -L "/usr/$gnu" ./api_test)
  file "$dir/api_test" | sed "s|$dir/||"
fi
start_emulator "$dir" target/debug/spotflow-emulator
# The platform's side of the test: two cloud-to-device messages and a software update once the
# program's device exists
# (polled for at most 10 minutes, the program's own limit).
send_c2d() {
  local hub="" i
  for _ in $(seq 1200); do
    hub="$(target/debug/spotflow-emulator devices list "${ADMIN[@]}" | python3 -c \
      'import json, sys; print(next((d["hubDeviceId"] for d in json.load(sys.stdin) if d["deviceId"] == "c-api-device"), ""))')"
    [ -n "$hub" ] && break
    sleep 0.5
  done
  for i in 0 1; do
    target/debug/spotflow-emulator c2d send "$hub" --payload "c2d-$i" --property "n=$i" "${ADMIN[@]}" > /dev/null
  done
  # A software update for its update agent.
  printf 'c-firmware 2' > "$dir/firmware.bin"
  artifact="$(target/debug/spotflow-emulator update publish "$dir/firmware.bin" --version 2 "${ADMIN[@]}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
  target/debug/spotflow-emulator update rollout "$artifact" --device "$hub" "${ADMIN[@]}" > /dev/null
}
send_c2d &
c2d_sender=$!
(cd "$dir" && SPOTFLOW_INSTANCE="localhost:$HTTPS_PORT" SPOTFLOW_PROVISIONING_TOKEN="$PROVISIONING_TOKEN" \
  SPOTFLOW_MQTT_PORT="$MQTTS_PORT" SSL_CERT_FILE="$dir/data/ca.pem" timeout 600 "${run[@]}") \
  | tee "$dir/out"
wait "$c2d_sender" || true
grep -q "checks passed" "$dir/out" || fail "api_test did not pass under $qemu"
# The program's messages (its log records travel in messages of the device-logs stream, apart).
stored="$(target/debug/spotflow-emulator messages tail "${ADMIN[@]}" | grep -vc '"stream":"device-logs"')"
logs="$(target/debug/spotflow-emulator logs tail --json "${ADMIN[@]}" | wc -l)"
echo "-- the emulator stored $stored messages and $logs log records"
[ "$stored" -eq 56 ] || fail "the emulator stored $stored messages, not 56"
[ "$logs" -eq 2 ] || fail "the emulator stored $logs log records, not 2"
