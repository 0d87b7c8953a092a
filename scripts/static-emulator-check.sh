#!/usr/bin/env bash
# Checks a static emulator (one file, no libc dependency: scripts/release.sh builds them), or the
# Windows one (spotflow-emulator.exe, under wine): starts
# it on free loopback ports (the aarch64 one under qemu-user), creates a provisioning token and
# counts the stored messages with the same binary as the admin client, and runs the quick start's
# device against it (SPOTFLOW_INSTANCE): every message it sends must be stored, once.
# Usage: scripts/static-emulator-check.sh x86_64|aarch64|windows EMULATOR QUICKSTART
#   EMULATOR    e.g. dist/spotflow-emulator-aarch64-unknown-linux-musl
#   QUICKSTART  the quick start example built for this machine (target/debug/examples/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "static-emulator-check: $*" >&2; exit 1; }
case "${1:-}" in
  x86_64) run=() ;;
  aarch64) run=(qemu-aarch64) ;;
  windows) run=("$PWD/scripts/windows/wine-run.sh") ;;
  *) fail "usage: $0 x86_64|aarch64|windows EMULATOR QUICKSTART" ;;
esac
emulator="${2:-}" quickstart="${3:-}"
[ -x "$emulator" ] || fail "no such emulator binary: $emulator"
[ -x "$quickstart" ] || fail "no such quick start binary: $quickstart (cargo build --example quickstart)"
[ ${#run[@]} -eq 0 ] || command -v "${run[0]}" >/dev/null || fail "${run[0]} is missing: apt-get install qemu-user"
description="$(file -b "$emulator")"
echo "-- $emulator: $(stat -c %s "$emulator") bytes, $description"
if [ "$1" = windows ]; then
  grep -q "PE32+ executable" <<<"$description" || fail "$emulator is not a Windows executable"
else
  grep -q "statically linked\|static-pie linked" <<<"$description" || fail "$emulator is not a static executable"
fi

mkdir -p target/tmp
dir="$(mktemp -d "$PWD/target/tmp/static-emulator.XXXXXX")"
# shellcheck source=scripts/emulator-process.sh
source scripts/emulator-process.sh
trap 'stop_emulator; rm -rf "$dir"' EXIT
start_emulator "$dir" "$emulator" "${run[@]}"

SPOTFLOW_INSTANCE="localhost:$HTTPS_PORT" SPOTFLOW_PROVISIONING_TOKEN="$PROVISIONING_TOKEN" SPOTFLOW_CA_FILE="$dir/data/ca.pem" \
  SPOTFLOW_MQTT_PORT="$MQTTS_PORT" timeout 120 "$quickstart" | tr "\r" "\n" | tail -n 3
stored="$("${run[@]}" "$emulator" messages tail "${ADMIN[@]}" | wc -l)"
echo "-- the emulator stored $stored messages"
# The quick start sends 5,000 messages and a batch completion.
[ "$stored" -eq 5001 ] || fail "the emulator stored $stored messages, not 5001"
