#!/usr/bin/env bash
# Where one process spends its CPU on the native merge path under `wrk -c64`: perf record with
# DWARF call graphs, then the top self-time symbols and, for each PATTERN given, the share of
# samples whose stack contains it (inclusive time), e.g.
#   tests/perf/profile.sh gateway async_nats::header:: writev gather_answer
#   tests/perf/profile.sh worker sdk::handle serde_json
# WHO is gateway, worker or nats-server; BINS (default target/release) holds the binaries.
# Needs perf (Debian linux-perf), wrk, nats-server, python3. Keeps perf.data in $OUT (a temp dir).
set -u
WHO=${1:-gateway}; shift || true
BINS=${BINS:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
OUT=${OUT:-$(mktemp -d)}
. "$(dirname "$0")/merge-stack.sh"
start_merge_stack "$BINS" "$OUT"
trap stop_merge_stack EXIT
wrk -t2 -c64 -d10s "$URL" > "$OUT/wrk.txt" & WRK=$!
sleep 2
case $WHO in gateway) P=$G;; worker) P=$W;; nats-server) P=$N;; *) echo "WHO: gateway|worker|nats-server" >&2; exit 2;; esac
perf record -e cpu-clock -F 2000 -g --call-graph dwarf,16384 -p "$P" -o "$OUT/perf.data" -- sleep 4 > /dev/null 2>&1
wait $WRK
echo "$WHO under $(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt") req/s; perf data in $OUT"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -4
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-130 | head -25
[ $# -gt 0 ] || exit 0
perf script -i "$OUT/perf.data" 2> /dev/null | "$(dirname "$0")/stack-shares.py" "$@"
