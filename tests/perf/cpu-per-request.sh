#!/usr/bin/env bash
# CPU time, system calls and context switches per request of each process on the native merge
# path (gateway, native worker, nats-server), measured with `perf stat` under `wrk -c64`.
# Compare builds in the same run:  tests/perf/cpu-per-request.sh /tmp/old-bins target/release
# ADAPTERS=1 measures the merge through two adapters to the anchors' nginx upstreams instead
# (start them first: ../shared/bench/anchors.sh start).
# Needs perf (Debian linux-perf), wrk, nats-server; a bin dir holds busgate and busgate-worker.
set -u
[ $# -ge 1 ] || set -- "$(cd "$(dirname "$0")/../.." && pwd)/target/release"
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
. "$(dirname "$0")/merge-stack.sh"
one() {
  local bins=$1
  start_merge_stack "$bins" "$D"
  wrk -t2 -c64 -d10s "$URL" > "$D/wrk.txt" & local WRK=$!
  sleep 2
  for p in $G $W $W2 $N; do perf stat -e raw_syscalls:sys_enter,context-switches,cpu-clock -p "$p" -o "$D/stat.$p" -- sleep 5 & done
  wait $WRK; sleep 1
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' "$D/wrk.txt")
  printf '%s: %s req/s\n' "$bins" "$rps"
  for p in gateway:$G worker:$W ${W2:+worker2:$W2} nats-server:$N; do
    awk -v n="${p%%:*}" -v rps="$rps" '
      /raw_syscalls/ {gsub(",","",$1); s=$1} /context-switches/ {gsub(",","",$1); c=$1} /cpu-clock/ {gsub(",","",$1); t=$1}
      END {printf "  %-12s %6.1f us CPU  %5.2f syscalls  %5.2f context switches per request\n", n, t*1000/(rps*5), s/(rps*5), c/(rps*5)}' "$D/stat.${p#*:}"
  done
  stop_merge_stack
}
for bins in "$@"; do one "$bins"; done
