#!/usr/bin/env bash
# Replies per write of the adapters, with the wire writer's batching (issue 24: gather until a
# turn of the event loop adds nothing) against its same-run control (BUSGATE_WIRE_GATHER=single:
# one yield, as before), on one stack, at one paced rate, interleaved A B A B. Replies per write
# is a count, not a timing: at the same paced rate it compares the two on a busy machine too
# (the absolute figure still depends on the rate; compare A and B of one run only).
#   tests/perf/replies-per-write.sh [BIN_DIR]   (ROUNDS=2, SECONDS_PER_ROUND=6, DELAY_MS=20, PROCESSES=2,
#                                                A_GATHER=default, B_GATHER=single)
# A serves n1+n2, B serves h1+h2 (same nginx upstreams), each as PROCESSES adapter processes
# (2: one per service, as the benchmark; 1: both in one). Per round and mode: the replies the
# adapters published (nats-server's /connz in_msgs of their request connections) and their
# writes to nats-server (perf trace, by file descriptor) over the same seconds, under
# `wrk -t2 -c64` with a Lua delay() of DELAY_MS per request.
# Needs perf, wrk, nats-server, nginx (the peers, tests/perf/peers/peers.sh).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
PEERS=${PEERS:-$HERE/peers/peers.sh}
ROUNDS=${ROUNDS:-2} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-6} DELAY_MS=${DELAY_MS:-20} PROCESSES=${PROCESSES:-2}
# BUSGATE_WIRE_GATHER of each: default (two turns, then while growing), turns (one turn, then
# while growing), single (one yield: before issue 24).
A_GATHER=${A_GATHER:-default} B_GATHER=${B_GATHER:-single}
export UP1=${UP1:-28081} UP2=${UP2:-28082} PROXY=${PROXY:-28090} MERGE=${MERGE:-28091} HAPROXY=${HAPROXY:-28092}
export PEERS_DIR=${PEERS_DIR:-/tmp/busgate-peers-rpw}
D=$(mktemp -d)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null; wait "${PIDS[@]}" 2>/dev/null
  "$PEERS" stop > /dev/null 2>&1
  rm -rf "$D"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$PEERS" start > "$D/peers.log" 2>&1 || { cat "$D/peers.log" >&2; exit 1; }
U1=http://127.0.0.1:$UP1/order/{order_id} U2=http://127.0.0.1:$UP2/order/{order_id}
np=$(port); mp=$(port); hp=$(port); ap=$(port)
cat > "$D/gw.toml" <<TOML
[log]
level = "warn"
[auth]
mode = "none"
[services.n1]
[services.n2]
[services.h1]
[services.h2]
[routes.merge-a]
bindings = [{ method = "GET", path = "/rpw/a/{order_id}" }]
targets = [{ service = "n1" }, { service = "n2", required = false }]
[routes.merge-b]
bindings = [{ method = "GET", path = "/rpw/b/{order_id}" }]
targets = [{ service = "h1" }, { service = "h2", required = false }]
TOML
"${NATS_SERVER:-$("$HERE/../../deploy/install-nats.sh")}" -a 127.0.0.1 -p "$np" -m "$mp" > "$D/nats.log" 2>&1 & PIDS+=($!)
export BUSGATE_NATS__URL=nats://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn
BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap \
  "$BINS/busgate" gateway --config "$D/gw.toml" > "$D/g.log" 2>&1 & PIDS+=($!)
APIDS=() BPIDS=()
adapters() { # MODE_ENV S1 S2 -> pids on stdout via the arrays
  local gather=$1 s1=$2 s2=$3
  if [ "$PROCESSES" = 1 ]; then
    BUSGATE_WIRE_GATHER=$gather "$BINS/busgate-worker" adapter --service "$s1" --upstream "$U1" \
      --service "$s2" --upstream "$U2" > "$D/$s1.log" 2>&1 &
    echo $!
  else
    BUSGATE_WIRE_GATHER=$gather "$BINS/busgate-worker" adapter --service "$s1" --upstream "$U1" > "$D/$s1.log" 2>&1 &
    echo $!
    BUSGATE_WIRE_GATHER=$gather "$BINS/busgate-worker" adapter --service "$s2" --upstream "$U2" > "$D/$s2.log" 2>&1 &
    echo $!
  fi
}
mapfile -t APIDS < <(adapters "$A_GATHER" n1 n2)
mapfile -t BPIDS < <(adapters "$B_GATHER" h1 h2)
PIDS+=("${APIDS[@]}" "${BPIDS[@]}")
A=http://127.0.0.1:$hp/rpw/a/12345 B=http://127.0.0.1:$hp/rpw/b/12345
for url in "$A" "$B"; do
  for _ in $(seq 200); do curl -sf "$url" | grep -q '"complete":true' && break; sleep 0.1; done
  curl -sf "$url" | grep -q '"complete":true' || { echo "not ready: $url" >&2; tail "$D"/*.log >&2; exit 1; }
  wrk -t2 -c64 -d2s "$url" > /dev/null
done
echo "function delay() return $DELAY_MS end" > "$D/pace.lua"
# Replies published by the request connections of the given services (nats-server's view).
replies() {
  curl -sf "http://127.0.0.1:$mp/connz?limit=4096" | python3 -c '
import json, sys
names = set(sys.argv[1:])
total = 0
try:
    connections = json.load(sys.stdin).get("connections", [])
except ValueError:
    connections = []  # /connz did not answer: this measurement counts nothing
for c in connections:
    n = c.get("name", "")
    if n.startswith("busgate-worker adapter ") and set(n.split(" ", 2)[2].split(",")) <= names:
        total += c.get("in_msgs", 0)
print(total)' "$@"
}
# One measurement: paced load on URL; the replies the adapters PIDS published, and their writes
# to nats-server (perf trace of sendto/write/writev, kept when the file descriptor is a socket to
# nats-server's port: their HTTP requests to nginx are writes too) over SECONDS_PER_ROUND.
measure() { # URL "PIDS" SERVICES...
  local url=$1 pids=$2; shift 2
  wrk -t2 -c64 -d$((SECONDS_PER_ROUND + 2))s -s "$D/pace.lua" "$url" > "$D/wrk.txt" & local w=$!
  sleep 1
  ss -tnpH "dport = :$np" > "$D/ss.txt"
  local tasks=""
  for p in ${pids//,/ }; do for t in /proc/"$p"/task/*; do tasks+=" ${t##*/}:$p"; done; done
  local r0; r0=$(replies "$@")
  perf trace -e sendto,write,writev -o "$D/trace.txt" -p "$pids" -- sleep "$SECONDS_PER_ROUND" 2> /dev/null
  local r1; r1=$(replies "$@")
  wait "$w"
  local writes; writes=$(python3 - "$D/ss.txt" "$D/trace.txt" $tasks <<'PY'
import re, sys
ss, trace, tasks = sys.argv[1], sys.argv[2], dict(t.split(":") for t in sys.argv[3:])
nats = set()
for line in open(ss):
    for pid, fd in re.findall(r"pid=(\d+),fd=(\d+)", line):
        nats.add((pid, fd))
n = 0
for line in open(trace):
    m = re.search(r"/(\d+) (?:sendto|write|writev)\(fd: (\d+)", line)
    if m and (tasks.get(m.group(1), m.group(1)), m.group(2)) in nats:
        n += 1
print(n)
PY
)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' "$D/wrk.txt")
  echo "$((r1 - r0)) $writes $rps"
}
join() { local IFS=,; echo "$*"; }
echo "paced wrk -c64, delay ${DELAY_MS} ms, ${SECONDS_PER_ROUND}s per measurement, $PROCESSES adapter process(es) per mode;"
echo "A = BUSGATE_WIRE_GATHER=$A_GATHER, B = BUSGATE_WIRE_GATHER=$B_GATHER (default: two turns, then until a turn adds nothing; turns: one, then the same; single: one yield, as before)"
ra=() rb=()
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    read -r an aw arps < <(measure "$A" "$(join "${APIDS[@]}")" n1 n2)
    read -r bn bw brps < <(measure "$B" "$(join "${BPIDS[@]}")" h1 h2)
  else
    read -r bn bw brps < <(measure "$B" "$(join "${BPIDS[@]}")" h1 h2)
    read -r an aw arps < <(measure "$A" "$(join "${APIDS[@]}")" n1 n2)
  fi
  a=$(python3 -c "print(f'{$an / max($aw, 1):.2f}')") b=$(python3 -c "print(f'{$bn / max($bw, 1):.2f}')")
  ra+=("$a") rb+=("$b")
  printf 'round %s  A %s replies in %s writes = %s per write (%s req/s)   B %s replies in %s writes = %s per write (%s req/s)\n' \
    "$round" "$an" "$aw" "$a" "$arps" "$bn" "$bw" "$b" "$brps"
done
python3 - "${ra[*]}" "${rb[*]}" <<'PY'
import statistics, sys
a, b = ([float(x) for x in arg.split()] for arg in sys.argv[1:3])
m = statistics.median
print(f"median replies per write: A {m(a):.2f}, B {m(b):.2f} (A/B {m(a) / max(m(b), 1e-9):.2f})")
PY
