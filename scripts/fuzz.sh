#!/usr/bin/env bash
# Fuzzes everything a server sends the SDK and the store's records with cargo-fuzz (nightly).
#   bash scripts/fuzz.sh                 # 1,000,000 executions per target (the long run)
#   bash scripts/fuzz.sh --seconds 20    # each target for 20 s
#   bash scripts/fuzz.sh --runs N [target ...]
#   bash scripts/fuzz.sh --quick --seconds 10   # CI: an unoptimised build without AddressSanitizer
#                                              # (half the build, a tenth of the executions per second)
#   bash scripts/fuzz.sh --jobs 2 ...    # two targets at a time (one core each)
# Prints, per target, the executions, the time and what was found (a crash, a timeout of 10 s, or
# an allocation over 256 MiB stops the target and leaves the input in fuzz/artifacts/<target>/).
# Leak detection is off (the emulator keeps what it is sent, so every run would look like a leak and
# the scan would cost most of the time); unbounded growth is caught by the RSS limit.
# Committed seeds are fuzz/corpus/<target>/seed-*; what the fuzzer adds there is not committed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
limit=(-runs=1000000)
build=()
jobs=1
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) build=(--dev --sanitizer none); shift ;;
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! cargo +nightly fuzz --help > /dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build "${build[@]}"
mkdir -p target
# Runs target $1; its summary line goes to target/fuzz-$1.summary.
run_target() {
  local t=$1 log="target/fuzz-$1.log" result status=0
  mkdir -p "corpus/$t"
  if cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" -- "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -detect_leaks=0 \
      -malloc_limit_mb=256 -print_final_stats=1 > "$log" 2>&1; then
    result="no finding"
  else
    result="FINDING (see $log and artifacts/$t/)"
    status=1
  fi
  local runs secs
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1 || true)
  printf '%-22s %12s executions %6s s  %s\n' "$t" "${runs:-?}" "${secs:-?}" "$result" > "target/fuzz-$t.summary"
  return $status
}
rm -f target/fuzz-*.summary
for t in "${targets[@]}"; do
  # At most $jobs targets at a time (the outcome is in each target's summary).
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run_target "$t" &
done
wait
failed=0
for t in "${targets[@]}"; do
  if [ -f "target/fuzz-$t.summary" ]; then
    cat "target/fuzz-$t.summary"
    if grep -q FINDING "target/fuzz-$t.summary"; then failed=1; fi
  else
    echo "$t: no summary (the run did not finish)"
    failed=1
  fi
done
exit $failed
