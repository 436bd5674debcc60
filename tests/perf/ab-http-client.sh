#!/usr/bin/env bash
# The adapters' hand-written HTTP/1.1 client (workers/src/http1.rs) against hyper's client
# connection driven the same way (workers/src/hyper1.rs, chosen by
# BUSGATE_ADAPTER_HTTP_CLIENT=hyper, for benchmarking only), in one run, interleaved A B A B …
# on one stack (issue 24, part 2: keep the hand-written client only where it is ≥ 15 % ahead).
# Both adapters run side by side the whole time, each one process serving its own pair of
# services (n1+n2 with Busgate's client, h1+h2 with hyper's; same nginx upstreams) behind its
# own routes; the idle one costs nothing. Two scenarios: the merge of two sources (`merge`) and
# one source (`one`).
#   tests/perf/ab-http-client.sh [BIN_DIR]     (ROUNDS=3, SECONDS_PER_ROUND=8, SCENARIOS="merge one")
# Prints req/s, p99 and the adapter's CPU µs per request for each, and the B/A ratios.
# Needs wrk, nats-server, nginx (the peers, tests/perf/peers/peers.sh, on ports 28081/28082 and
# 28090–28092 in /tmp/busgate-peers-ab).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
PEERS=${PEERS:-$HERE/peers/peers.sh}
ROUNDS=${ROUNDS:-3} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-8} SCENARIOS=${SCENARIOS:-merge one}
export UP1=${UP1:-28081} UP2=${UP2:-28082} PROXY=${PROXY:-28090} MERGE=${MERGE:-28091} HAPROXY=${HAPROXY:-28092}
export PEERS_DIR=${PEERS_DIR:-/tmp/busgate-peers-ab}
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
[auth]
mode = "none"
# Coalescing off (on by default since issue 25): wrk asks for one order id, and coalesced
# requests would share one upstream call, leaving the clients almost nothing to do.
[services.n1]
coalesce = false
[services.n2]
coalesce = false
[services.h1]
coalesce = false
[services.h2]
coalesce = false
[routes.merge-a]
bindings = [{ method = "GET", path = "/ab/merge-a/{order_id}" }]
targets = [{ service = "n1" }, { service = "n2", required = false }]
[routes.merge-b]
bindings = [{ method = "GET", path = "/ab/merge-b/{order_id}" }]
targets = [{ service = "h1" }, { service = "h2", required = false }]
[routes.one-a]
bindings = [{ method = "GET", path = "/ab/one-a/{order_id}" }]
targets = [{ service = "n1" }]
[routes.one-b]
bindings = [{ method = "GET", path = "/ab/one-b/{order_id}" }]
targets = [{ service = "h1" }]
TOML
"${NATS_SERVER:-$("$HERE/../../deploy/install-nats.sh")}" -a 127.0.0.1 -p "$np" > "$D/nats.log" 2>&1 & PIDS+=($!)
export BUSGATE_NATS__URL=nats://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn
BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap \
  "$BINS/busgate" gateway --config "$D/gw.toml" > "$D/g.log" 2>&1 & PIDS+=($!)
BUSGATE_ADAPTER_HTTP_CLIENT=busgate "$BINS/busgate-worker" adapter \
  --service n1 --upstream "$U1" --service n2 --upstream "$U2" > "$D/a.log" 2>&1 & APID=$!
BUSGATE_ADAPTER_HTTP_CLIENT=hyper "$BINS/busgate-worker" adapter \
  --service h1 --upstream "$U1" --service h2 --upstream "$U2" > "$D/b.log" 2>&1 & BPID=$!
PIDS+=("$APID" "$BPID")
# CPU time (user + system, clock ticks) of a process: immune to the machine's load.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
base=http://127.0.0.1:$hp/ab
for url in "$base/merge-a/12345" "$base/merge-b/12345" "$base/one-a/12345" "$base/one-b/12345"; do
  for _ in $(seq 200); do
    curl -sf "$url" | grep -q '"complete":true' && break; sleep 0.1
  done
  curl -sf "$url" | grep -q '"complete":true' || { echo "not ready: $url" >&2; tail "$D"/*.log >&2; exit 1; }
  wrk -t2 -c64 -d3s "$url" > /dev/null
done
run() { wrk -t2 -c64 -d"${SECONDS_PER_ROUND}s" --latency "$1" | awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} / 99%/ {p=$2} / Non-2xx/ {e=$4} END {print r, p, n, e+0}'; }
cpu_us() { python3 -c "print(f'{($2 - $1) * 1e6 / $HZ / $3:.1f}')"; }
echo "$ROUNDS rounds of ${SECONDS_PER_ROUND}s each, wrk -t2 -c64; A = Busgate's http1.rs, B = hyper's client connection; one adapter process each (both services)"
for scenario in $SCENARIOS; do
  ra=() rb=() ca=() cb=()
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      t0=$(ticks "$APID"); read -r a ap99 an ae < <(run "$base/$scenario-a/12345"); t1=$(ticks "$APID")
      u0=$(ticks "$BPID"); read -r b bp99 bn be < <(run "$base/$scenario-b/12345"); u1=$(ticks "$BPID")
    else
      u0=$(ticks "$BPID"); read -r b bp99 bn be < <(run "$base/$scenario-b/12345"); u1=$(ticks "$BPID")
      t0=$(ticks "$APID"); read -r a ap99 an ae < <(run "$base/$scenario-a/12345"); t1=$(ticks "$APID")
    fi
    acpu=$(cpu_us "$t0" "$t1" "$an") bcpu=$(cpu_us "$u0" "$u1" "$bn")
    ra+=("$a") rb+=("$b") ca+=("$acpu") cb+=("$bcpu")
    printf '%s round %s  A %9s req/s (p99 %s, %s us adapter CPU/req, %s non-2xx)   B %9s req/s (p99 %s, %s us, %s non-2xx)   B/A %s\n' \
      "$scenario" "$round" "$a" "$ap99" "$acpu" "$ae" "$b" "$bp99" "$bcpu" "$be" "$(python3 -c "print(f'{$b/$a:.3f}')")"
  done
  python3 - "$scenario" "${ra[*]}" "${rb[*]}" "${ca[*]}" "${cb[*]}" <<'PY'
import statistics, sys
s = sys.argv[1]
a, b, ca, cb = ([float(x) for x in arg.split()] for arg in sys.argv[2:6])
m = statistics.median
print(f"{s}: median A {m(a):.0f} req/s, median B {m(b):.0f} req/s, per-round B/A {m([y / x for x, y in zip(a, b)]):.3f}; "
      f"adapter CPU per request A {m(ca):.1f} us, B {m(cb):.1f} us (B/A {m(cb) / m(ca):.3f}); "
      f"keep http1.rs only if A is >= 15 % ahead (B/A <= 0.87 in req/s, or >= 1.15 in CPU)")
PY
done
