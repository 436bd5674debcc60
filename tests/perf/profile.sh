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
cat > "$OUT/gw.toml" <<'T'
[log]
level = "warn"
[services.n1]
timeout = "2s"
[services.n2]
timeout = "2s"
[routes.merge]
deadline = "2s"
bindings = [{ method = "GET", path = "/bench/merge/{order_id}" }]
targets = [{ service = "n1" }, { service = "n2", required = false }]
T
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
np=$(port); hp=$(port); ap=$(port)
nats-server -a 127.0.0.1 -p "$np" > "$OUT/nats.log" 2>&1 & N=$!
export BUSGATE_NATS__URL=nats://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn
"$BINS/busgate-worker" native --service n1 --service n2 > "$OUT/w.log" 2>&1 & W=$!
BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap "$BINS/busgate" gateway --config "$OUT/gw.toml" > "$OUT/g.log" 2>&1 & G=$!
trap 'kill $G $W $N 2>/dev/null' EXIT
url=http://127.0.0.1:$hp/bench/merge/12345
for _ in $(seq 100); do curl -sf "$url" > /dev/null && break; sleep 0.1; done
wrk -t2 -c64 -d2s "$url" > /dev/null
wrk -t2 -c64 -d10s "$url" > "$OUT/wrk.txt" & WRK=$!
sleep 2
case $WHO in gateway) P=$G;; worker) P=$W;; nats-server) P=$N;; *) echo "WHO: gateway|worker|nats-server" >&2; exit 2;; esac
perf record -e cpu-clock -F 2000 -g --call-graph dwarf,16384 -p "$P" -o "$OUT/perf.data" -- sleep 4 > /dev/null 2>&1
wait $WRK
echo "$WHO under $(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt") req/s; perf data in $OUT"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -4
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-130 | head -25
[ $# -gt 0 ] || exit 0
perf script -i "$OUT/perf.data" 2> /dev/null | python3 -c '
import sys
pats = sys.argv[1:]; counts = dict.fromkeys(pats, 0); total = 0; stack = []
def flush():
    global total
    if stack:
        total += 1
        s = "\n".join(stack)
        for p in pats:
            counts[p] += p in s
for line in sys.stdin:
    if not line.strip():
        flush(); stack = []
    elif line[0] in "\t ":
        stack.append(line.strip())
flush()
for p in pats:
    print(f"{100 * counts[p] / max(total, 1):5.1f} %  {p}")
' "$@"
