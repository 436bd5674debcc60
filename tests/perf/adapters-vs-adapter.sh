#!/usr/bin/env bash
# The configuration-following adapter (`busgate-worker adapters`) against the single-service
# adapter (`busgate-worker adapter --service … --upstream …`) on the benchmark's scenario 4 (two
# sources merged through adapters to nginx upstreams, the second optional), in one run,
# interleaved: A B A B … on one stack. Both kinds run side by side the whole time, each serving
# its own pair of services (n1+n2 by `adapter`, c1+c2 by `adapters`, same upstreams) behind its
# own route; the idle one costs nothing. TOPOLOGY=1 (default): one process of each serving both
# services; TOPOLOGY=2: two processes of each (the single-service kind one per service, as
# busgate-bench runs scenario 4; the `adapters` kind two that share both queue groups).
#   tests/perf/adapters-vs-adapter.sh [BIN_DIR]     (ROUNDS=3, SECONDS_PER_ROUND=8)
# Needs wrk, nats-server, nginx (its own peers, tests/perf/peers/peers.sh, on ports 28081/28082
# and 28090–28092 in /tmp/busgate-peers-aa).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
PEERS=${PEERS:-$HERE/peers/peers.sh}
ROUNDS=${ROUNDS:-3} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-8} TOPOLOGY=${TOPOLOGY:-1}
export UP1=${UP1:-28081} UP2=${UP2:-28082} PROXY=${PROXY:-28090} MERGE=${MERGE:-28091} HAPROXY=${HAPROXY:-28092}
export PEERS_DIR=${PEERS_DIR:-/tmp/busgate-peers-aa}
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
np=$(port); hp=$(port); ap=$(port)
cat > "$D/gw.toml" <<TOML
[log]
level = "warn"
# Anonymous, as scenario 4 of the benchmark (what clients cost: tests/perf/ab-auth.sh).
[auth]
mode = "none"
[services.n1]
[services.n2]
[services.c1.upstream]
url = "$U1"
concurrency = 1024
[services.c2.upstream]
url = "$U2"
concurrency = 1024
[routes.single]
bindings = [{ method = "GET", path = "/bench/single/{order_id}" }]
targets = [{ service = "n1" }, { service = "n2", required = false }]
[routes.following]
bindings = [{ method = "GET", path = "/bench/following/{order_id}" }]
targets = [{ service = "c1" }, { service = "c2", required = false }]
TOML
"${NATS_SERVER:-$("$HERE/../../deploy/install-nats.sh")}" -a 127.0.0.1 -p "$np" -js -sd "$D/js" > "$D/nats.log" 2>&1 & PIDS+=($!)
export BUSGATE_NATS__URL=nats://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn
BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap \
  "$BINS/busgate" gateway --config "$D/gw.toml" > "$D/g.log" 2>&1 & PIDS+=($!)
APIDS=() BPIDS=()
if [ "$TOPOLOGY" = 1 ]; then
  "$BINS/busgate-worker" adapter --service n1 --upstream "$U1" --service n2 --upstream "$U2" > "$D/a.log" 2>&1 & APIDS+=($!)
  "$BINS/busgate-worker" adapters > "$D/as.log" 2>&1 & BPIDS+=($!)
else
  "$BINS/busgate-worker" adapter --service n1 --upstream "$U1" > "$D/a1.log" 2>&1 & APIDS+=($!)
  "$BINS/busgate-worker" adapter --service n2 --upstream "$U2" > "$D/a2.log" 2>&1 & APIDS+=($!)
  "$BINS/busgate-worker" adapters > "$D/as1.log" 2>&1 & BPIDS+=($!)
  "$BINS/busgate-worker" adapters > "$D/as2.log" 2>&1 & BPIDS+=($!)
fi
PIDS+=("${APIDS[@]}" "${BPIDS[@]}")
# CPU time (user + system, clock ticks) of the given processes: immune to the machine's load,
# unlike req/s on a shared machine.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
HZ=$(getconf CLK_TCK)
A=http://127.0.0.1:$hp/bench/single/12345
B=http://127.0.0.1:$hp/bench/following/12345
for url in "$A" "$B"; do
  for _ in $(seq 200); do
    curl -sf "$url" | grep -q '"complete":true' && break; sleep 0.1
  done
  curl -sf "$url" | grep -q '"complete":true' || { echo "not ready: $url" >&2; tail "$D"/*.log >&2; exit 1; }
  wrk -t2 -c64 -d3s "$url" > /dev/null
done
run() { wrk -t2 -c64 -d"${SECONDS_PER_ROUND}s" --latency "$1" | awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} / 99%/ {p=$2} END {print r, p, n}'; }
# µs of CPU of the adapter processes per request over one round.
cpu_us() { python3 -c "print(f'{($2 - $1) * 1e6 / $HZ / $3:.1f}')"; }
echo "topology $TOPOLOGY, $ROUNDS rounds of ${SECONDS_PER_ROUND}s each, wrk -t2 -c64, A = adapter (single-service), B = adapters (following the configuration)"
ra=() rb=() ca=() cb=()
for round in $(seq "$ROUNDS"); do
  # A first in odd rounds, B first in even ones: no order effect.
  if [ $((round % 2)) = 1 ]; then
    t0=$(ticks "${APIDS[@]}"); read -r a ap99 an < <(run "$A"); t1=$(ticks "${APIDS[@]}")
    u0=$(ticks "${BPIDS[@]}"); read -r b bp99 bn < <(run "$B"); u1=$(ticks "${BPIDS[@]}")
  else
    u0=$(ticks "${BPIDS[@]}"); read -r b bp99 bn < <(run "$B"); u1=$(ticks "${BPIDS[@]}")
    t0=$(ticks "${APIDS[@]}"); read -r a ap99 an < <(run "$A"); t1=$(ticks "${APIDS[@]}")
  fi
  acpu=$(cpu_us "$t0" "$t1" "$an") bcpu=$(cpu_us "$u0" "$u1" "$bn")
  ra+=("$a") rb+=("$b") ca+=("$acpu") cb+=("$bcpu")
  printf 'round %s  A %9s req/s (p99 %s, %s us CPU/req)   B %9s req/s (p99 %s, %s us CPU/req)   B/A %s\n' \
    "$round" "$a" "$ap99" "$acpu" "$b" "$bp99" "$bcpu" "$(python3 -c "print(f'{$b/$a:.3f}')")"
done
python3 - "${ra[*]}" "${rb[*]}" "${ca[*]}" "${cb[*]}" <<'PY'
import statistics, sys
a, b, ca, cb = ([float(x) for x in arg.split()] for arg in sys.argv[1:5])
m = statistics.median
print(f"median A {m(a):.0f} req/s, median B {m(b):.0f} req/s, median of per-round B/A {m([y / x for x, y in zip(a, b)]):.3f}; "
      f"adapter CPU per request: A {m(ca):.1f} us, B {m(cb):.1f} us (B/A {m(cb) / m(ca):.3f})")
PY
