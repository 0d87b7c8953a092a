#!/usr/bin/env bash
# CPU per message at 200 msg/s of one device on Linux and under wine, in one run: spotflow-fleet
# with one device and its own SQLite store (as the quick start's device), release builds for both,
# against the same emulator process (Linux), alternating, RUNS runs of SECONDS each; medians.
# The device's CPU is its own figure (getrusage on Linux, GetProcessTimes on Windows) while it
# sends; under wine, the wine server (a process of its own, which every system call that waits
# goes through) is counted apart from /proc. Indicative only: wine is not Windows.
# Usage: scripts/windows/cpu-per-message.sh [RUNS] [SECONDS]   (default 3 runs of 20 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-3}" seconds="${2:-20}"
linux=target/release/spotflow-fleet
windows=target/windows-release/x86_64-pc-windows-gnu/release/spotflow-fleet.exe
[ -x "$linux" ] || cargo build -q --release -p spotflow-fleet
[ -e "$windows" ] || cargo build -q --release --target x86_64-pc-windows-gnu --target-dir target/windows-release -p spotflow-fleet
[ -x target/debug/spotflow-emulator ] || cargo build -q -p spotflow-emulator
mkdir -p target/tmp
dir="$(mktemp -d "$PWD/target/tmp/cpu-per-message.XXXXXX")"
# shellcheck source=scripts/emulator-process.sh
source scripts/emulator-process.sh
export WINEPREFIX="$dir/wineprefix" WINEDEBUG=-all
server=
trap 'stop_emulator; [ -z "$server" ] || wineserver -k 2>/dev/null; rm -rf "$dir"' EXIT
start_emulator "$dir" target/debug/spotflow-emulator
# The prefix made, then one wine server kept for every run (-p: persistent; -f: in the
# foreground, so that its pid is ours to read).
scripts/windows/wine-run.sh "$windows" --help > /dev/null 2>&1 < /dev/null
wineserver -k 2>/dev/null || true
wineserver -p -f > /dev/null 2>&1 < /dev/null &
server=$!
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
# Into a file, not a pipe: wine's services, which the persistent server keeps, inherit it.
run() {
  "$@" --devices 1 --rate 200 --duration "$seconds" --store sqlite --instance "localhost:$HTTPS_PORT" \
    --provisioning-token "$PROVISIONING_TOKEN" --ca-file "$dir/data/ca.pem" --mqtt-port "$MQTTS_PORT" \
    --progress-every 3600 > "$dir/out" 2>&1 < /dev/null
  cat "$dir/out"
}
figure() { sed -n "$1" <<<"$2" | head -1; }
linux_us=() wine_us=() server_us=()
for i in $(seq "$runs"); do
  out="$(run "$linux")"
  linux_us+=("$(figure 's/.*CPU while sending | .* = \([0-9]*\) µs per delivered message.*/\1/p' "$out")")
  before="$(ticks "$server")"
  out="$(run scripts/windows/wine-run.sh "$windows")"
  after="$(ticks "$server")"
  wine_us+=("$(figure 's/.*CPU while sending | .* = \([0-9]*\) µs per delivered message.*/\1/p' "$out")")
  delivered="$(figure 's/.*messages delivered (acknowledged) | \([0-9]*\) in.*/\1/p' "$out")"
  server_us+=("$(( (after - before) * 1000000 / hz / delivered ))")
  echo "-- run $i: Linux ${linux_us[-1]} µs, wine ${wine_us[-1]} µs + wine server ${server_us[-1]} µs per message ($delivered delivered)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
l="$(median "${linux_us[@]}")" w="$(median "${wine_us[@]}")" s="$(median "${server_us[@]}")"
echo
echo "| one device at 200 msg/s, SQLite store ($runs runs of $seconds s, medians) | CPU per message |"
echo "|---|---|"
echo "| Linux (x86_64-unknown-linux-gnu) | $l µs |"
echo "| under wine 8.0 (x86_64-pc-windows-gnu): the device's process | $w µs ($(awk "BEGIN {printf \"%.2f\", $w / $l}")x Linux) |"
echo "| under wine 8.0: the wine server, apart (wall-clock wakeups, waits and file IO pass through it; /proc) | $s µs |"
