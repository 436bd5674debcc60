#!/usr/bin/env bash
# Where TLS's cost goes (issue 28): the merge (scenario 3, native services) over cleartext and
# over the gateway's own TLS, interleaved per round, with the CPU time per request of each
# process (the gateway, the load generator wrk, the native worker, nats-server) from
# /proc/PID/stat around each wrk run, and the gateway's system calls per request.
#   tests/perf/tls-cpu.sh [BIN_DIR]   (default target/release; ROUNDS=3, SECONDS_PER_ROUND=10)
# On a machine where wrk shares the cores with the gateway (2 cores: every process of the
# stack does), TLS costs the client too: the req/s ratio of tls-edge.sh counts wrk's OpenSSL
# time against the gateway. This prints both, so that the gateway's own share can be read:
#   gateway CPU/request tls ÷ plain   the gateway's TLS overhead
#   wrk CPU/request tls ÷ plain       the client's, not the gateway's
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
ROUNDS=${ROUNDS:-3} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
. "$HERE/merge-stack.sh"
D=$(mktemp -d)
GT=
trap '[ -n "$GT" ] && kill "$GT" 2>/dev/null; stop_merge_stack 2>/dev/null; rm -rf "$D"' EXIT
start_merge_stack "$BINS" "$D"
start_tls_gateway "$BINS" "$D"
for _ in $(seq 100); do curl -sf --cacert "$D/ca.pem" "$TLS_URL" > /dev/null && break; sleep 0.1; done
curl -sf --cacert "$D/ca.pem" "$TLS_URL" > /dev/null || { echo "no 200 at $TLS_URL" >&2; exit 1; }
wrk -t2 -c64 -d2s "$TLS_URL" > /dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    if [ "$mode" = plain ]; then url=$URL pid=$G; else url=$TLS_URL pid=$GT; fi
    g0=$(ticks "$pid") w0=$(ticks "$W") n0=$(ticks "$N")
    perf stat -e raw_syscalls:sys_enter -p "$pid" -o "$D/sys" -- sleep "$SECONDS_PER_ROUND" 2> /dev/null &
    stat=$!
    /usr/bin/time -f "%U %S" -o "$D/time" wrk -t2 -c64 -d"${SECONDS_PER_ROUND}s" "$url" > "$D/wrk.txt"
    wait "$stat"
    g1=$(ticks "$pid") w1=$(ticks "$W") n1=$(ticks "$N")
    rps=$(awk '/Requests\/sec/ {print $2}' "$D/wrk.txt")
    sys=$(awk '/raw_syscalls/ {gsub(",", "", $1); print $1}' "$D/sys")
    python3 - "$round" "$mode" "$rps" "$(cat "$D/time")" $((g1 - g0)) $((w1 - w0)) $((n1 - n0)) "${sys:-0}" "$SECONDS_PER_ROUND" <<'PY'
import os, sys
rnd, mode, rps, t, g, w, n, sysc, secs = sys.argv[1:]
req = float(rps) * float(secs)
hz = os.sysconf("SC_CLK_TCK")
us = lambda ticks: int(ticks) * 1e6 / hz / req
wrk = (float(t.split()[0]) + float(t.split()[1])) * 1e6 / req
print(f"round {rnd} {mode:5} {float(rps):9.0f} req/s  CPU us/request: gateway {us(g):5.1f}  wrk {wrk:5.1f}"
      f"  worker {us(w):5.1f}  nats {us(n):5.1f}  gateway syscalls/request {int(sysc) / req:4.2f}")
PY
  done
done
