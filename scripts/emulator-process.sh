# Sourced by the scripts that run a program against an emulator process:
#   start_emulator DIR EMULATOR [WRAPPER...]
# starts EMULATOR (under WRAPPER, e.g. qemu-aarch64) on free loopback ports with its data in
# DIR/data and automatic approval, waits for its banner (at most 60 s) and sets
# EMULATOR_PID, HTTPS_PORT, MQTTS_PORT, ADMIN (the admin CLI's --url and --data-dir) and
# PROVISIONING_TOKEN (made with the same binary). stop_emulator ends it.
start_emulator() {
  local dir="$1" emulator="$2"
  shift 2
  EMULATOR_RUN=("$@")
  "${EMULATOR_RUN[@]}" "$emulator" serve --https-port 0 --mqtts-port 0 --data-dir "$dir/data" --auto-approve-secs 1 \
    > "$dir/emulator.log" 2>&1 &
  EMULATOR_PID=$!
  local _
  for _ in $(seq 600); do
    grep -q "admin token file:" "$dir/emulator.log" && break
    kill -0 "$EMULATOR_PID" 2>/dev/null || { cat "$dir/emulator.log"; echo "the emulator exited" >&2; return 1; }
    sleep 0.1
  done
  grep -q "admin token file:" "$dir/emulator.log" \
    || { cat "$dir/emulator.log"; echo "the emulator did not start within 60 s" >&2; return 1; }
  HTTPS_PORT="$(sed -n 's|.*instance (HTTPS): *https://localhost:\([0-9]*\).*|\1|p' "$dir/emulator.log")"
  MQTTS_PORT="$(sed -n 's|.*MQTT over TLS: *localhost:\([0-9]*\).*|\1|p' "$dir/emulator.log")"
  [ -n "$HTTPS_PORT" ] && [ -n "$MQTTS_PORT" ] \
    || { cat "$dir/emulator.log"; echo "no ports in the emulator's banner" >&2; return 1; }
  ADMIN=(--url "https://localhost:$HTTPS_PORT" --data-dir "$dir/data")
  local created
  created="$("${EMULATOR_RUN[@]}" "$emulator" provisioning-token create "${ADMIN[@]}")"
  PROVISIONING_TOKEN="$(sed -n 's/.*"provisioningToken": *"\([^"]*\)".*/\1/p' <<<"$created")"
  [ -n "$PROVISIONING_TOKEN" ] || { echo "no provisioning token in: $created" >&2; return 1; }
  echo "-- the emulator listens on HTTPS $HTTPS_PORT and MQTT over TLS $MQTTS_PORT"
}

stop_emulator() {
  [ -z "${EMULATOR_PID:-}" ] || kill "$EMULATOR_PID" 2>/dev/null || true
  wait "${EMULATOR_PID:-}" 2>/dev/null || true
  EMULATOR_PID=
}
