#!/usr/bin/env bash
# ThreadSanitizer over the whole program, the library included: the C library built with
# `-Zsanitizer=thread` and Rust's standard library rebuilt the same way (nightly, rust-src),
# linked into spotflow-c/tests/c/threads_test.c built by clang with -fsanitize=thread, and run
# against an emulator process while this script calls the device's direct method and changes its
# desired properties. Every race ThreadSanitizer sees fails it, but those of
# spotflow-c/tests/c/tsan-full.supp (hand-offs through the kernel it cannot see, each explained).
# (CI runs the cheaper check of spotflow-c/tests/c_programs.rs, the library not instrumented.)
# Usage: scripts/tsan-full.sh   Needs: rustup (nightly with rust-src), clang.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "tsan-full: $*" >&2; exit 1; }
command -v clang >/dev/null || fail "clang is missing: apt-get install clang"
cargo +nightly --version >/dev/null 2>&1 || fail "the nightly toolchain is missing: rustup toolchain install nightly"
rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain nightly || fail "rustup cannot add rust-src to nightly"
host="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-Zsanitizer=thread" cargo +nightly build -Zbuild-std --target "$host" -p spotflow-c --target-dir target/tsan
lib="target/tsan/$host/debug/deps/libspotflow.a"
[ -f "$lib" ] || fail "no $lib"
[ -x target/debug/spotflow-emulator ] || cargo build -p spotflow-emulator

mkdir -p target/tmp
dir="$(mktemp -d "$PWD/target/tmp/tsan.XXXXXX")"
# shellcheck source=scripts/emulator-process.sh
source scripts/emulator-process.sh
child=
trap '[ -z "$child" ] || kill "$child" 2>/dev/null || true; stop_emulator; rm -rf "$dir"' EXIT
# The program's C is instrumented by clang; the runtime linked is rustc's (its LLVM is newer than
# Debian's clang and emits calls, __tsan_memcpy among them, that clang's runtime lacks).
runtime="$(rustc +nightly --print sysroot)/lib/rustlib/$host/lib/librustc-nightly_rt.tsan.a"
[ -f "$runtime" ] || fail "no ThreadSanitizer runtime at $runtime"
clang -std=c99 -g -O1 -fsanitize=thread -I spotflow-c/include -c -o "$dir/threads_test.o" spotflow-c/tests/c/threads_test.c
clang -o "$dir/threads_test" "$dir/threads_test.o" "$lib" -Wl,--whole-archive "$runtime" -Wl,--no-whole-archive \
  -rdynamic -lpthread -lm -ldl -lrt
start_emulator "$dir" target/debug/spotflow-emulator
calls=20 updates=10
supp="$PWD/spotflow-c/tests/c/tsan-full.supp"
(cd "$dir" && SPOTFLOW_INSTANCE="localhost:$HTTPS_PORT" SPOTFLOW_PROVISIONING_TOKEN="$PROVISIONING_TOKEN" \
  SPOTFLOW_MQTT_PORT="$MQTTS_PORT" SSL_CERT_FILE="$dir/data/ca.pem" METHOD_CALLS=$calls DESIRED_VERSION=$((1 + updates)) \
  TSAN_OPTIONS="halt_on_error=1:exitcode=66:suppressions=$supp" ./threads_test > out 2> err) &
child=$!
for _ in $(seq 600); do
  grep -q READY "$dir/out" 2>/dev/null && break
  kill -0 "$child" 2>/dev/null || break
  sleep 0.1
done
grep -q READY "$dir/out" || { cat "$dir/out" "$dir/err"; fail "threads_test did not start"; }
device="$(target/debug/spotflow-emulator devices list "${ADMIN[@]}" | grep -o '"hubDeviceId": *"[^"]*threads-device"' | sed 's/.*"\([^"]*\)"$/\1/' | head -n 1)"
[ -n "$device" ] || device="ws-emulator:threads-device"
for i in $(seq "$calls"); do
  kill -0 "$child" 2>/dev/null || break
  [ "$i" -gt "$updates" ] || target/debug/spotflow-emulator desired set "${ADMIN[@]}" "$device" "{\"update\": $i}" > /dev/null
  # The device connects in the background after start: retried (at most 10 s).
  for _ in $(seq 100); do
    target/debug/spotflow-emulator method "${ADMIN[@]}" "$device" count --payload '{}' > /dev/null 2>&1 && break
    kill -0 "$child" 2>/dev/null || break
    sleep 0.1
  done
done
status=0
wait "$child" || status=$?
child=
cat "$dir/out"
if [ "$status" -ne 0 ] || grep -q "ThreadSanitizer" "$dir/err"; then
  cat "$dir/err"
  fail "threads_test exited with $status under ThreadSanitizer"
fi
grep -q "threads_test: passed" "$dir/out" || fail "threads_test did not pass"
echo "-- ThreadSanitizer (library, standard library and program instrumented): no race"
