#!/usr/bin/env bash
# Checks a static emulator (one file, no libc dependency: scripts/release.sh builds them): starts
# it on free loopback ports (the aarch64 one under qemu-user), creates a provisioning token and
# counts the stored messages with the same binary as the admin client, and runs the quick start's
# device against it (SPOTFLOW_INSTANCE): every message it sends must be stored, once.
# Usage: scripts/static-emulator-check.sh x86_64|aarch64 EMULATOR QUICKSTART
#   EMULATOR    e.g. dist/spotflow-emulator-aarch64-unknown-linux-musl
#   QUICKSTART  the quick start example built for this machine (target/debug/examples/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "static-emulator-check: $*" >&2; exit 1; }
case "${1:-}" in
  x86_64) run=() ;;
  aarch64) run=(qemu-aarch64) ;;
  *) fail "usage: $0 x86_64|aarch64 EMULATOR QUICKSTART" ;;
esac
emulator="${2:-}" quickstart="${3:-}"
[ -x "$emulator" ] || fail "no such emulator binary: $emulator"
[ -x "$quickstart" ] || fail "no such quick start binary: $quickstart (cargo build --example quickstart)"
[ ${#run[@]} -eq 0 ] || command -v "${run[0]}" >/dev/null || fail "${run[0]} is missing: apt-get install qemu-user"
description="$(file -b "$emulator")"
echo "-- $emulator: $(stat -c %s "$emulator") bytes, $description"
grep -q "statically linked\|static-pie linked" <<<"$description" || fail "$emulator is not a static executable"

mkdir -p target/tmp
dir="$(mktemp -d "$PWD/target/tmp/static-emulator.XXXXXX")"
emulator_pid=
cleanup() {
  [ -z "$emulator_pid" ] || kill "$emulator_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"${run[@]}" "$emulator" serve --https-port 0 --mqtts-port 0 --data-dir "$dir/data" --auto-approve-secs 1 \
  > "$dir/log" 2>&1 &
emulator_pid=$!
# Its banner ends with the admin token file; bounded wait (qemu-user is slow to start).
for _ in $(seq 600); do
  grep -q "admin token file:" "$dir/log" && break
  kill -0 "$emulator_pid" 2>/dev/null || { cat "$dir/log"; fail "the emulator exited"; }
  sleep 0.1
done
grep -q "admin token file:" "$dir/log" || { cat "$dir/log"; fail "the emulator did not start within 60 s"; }
https_port="$(sed -n 's|.*instance (HTTPS): *https://localhost:\([0-9]*\).*|\1|p' "$dir/log")"
mqtts_port="$(sed -n 's|.*MQTT over TLS: *localhost:\([0-9]*\).*|\1|p' "$dir/log")"
[ -n "$https_port" ] && [ -n "$mqtts_port" ] || { cat "$dir/log"; fail "no ports in the emulator's banner"; }
echo "-- the emulator listens on HTTPS $https_port and MQTT over TLS $mqtts_port"
admin=(--url "https://localhost:$https_port" --data-dir "$dir/data")
created="$("${run[@]}" "$emulator" provisioning-token create "${admin[@]}")"
token="$(sed -n 's/.*"provisioningToken": *"\([^"]*\)".*/\1/p' <<<"$created")"
[ -n "$token" ] || fail "no provisioning token in: $created"

SPOTFLOW_INSTANCE="localhost:$https_port" SPOTFLOW_PROVISIONING_TOKEN="$token" SPOTFLOW_CA_FILE="$dir/data/ca.pem" \
  SPOTFLOW_MQTT_PORT="$mqtts_port" timeout 120 "$quickstart" | tr "\r" "\n" | tail -n 3
stored="$("${run[@]}" "$emulator" messages tail "${admin[@]}" | wc -l)"
echo "-- the emulator stored $stored messages"
# The quick start sends 5,000 messages and a batch completion.
[ "$stored" -eq 5001 ] || fail "the emulator stored $stored messages, not 5001"
