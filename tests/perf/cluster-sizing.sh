#!/usr/bin/env bash
# The figures of docs/scaling.md: CPU per request of every process (gateways, each nats-server
# node, adapters, the nginx services, native workers) on the merge through adapters, on one
# NATS node and on a 3-node NATS cluster with JetStream, and the gateway's cost per extra source.
#
#   tests/perf/cluster-sizing.sh [BIN_DIR]     (default: this checkout's target/release)
#
# Layouts (LAYOUTS="A B C D E F" by default; a subset runs only those):
#   A  one nats-server (no JetStream), gateway + one adapter process serving n1 and n2: the
#      baseline, merge-stack.sh's ADAPTERS=1 ADAPTER_PROCESSES=1
#   B  3-node cluster, gateway and adapters both on node 1
#   C  3-node cluster, gateway on node 1, adapters on node 2: every request and reply crosses a
#      route
#   D  3-node cluster, gateways on node 1 and node 2, one adapter process on node 2 and one on
#      node 3 (each serving n1 and n2, in the same queue groups)
#   E  async submits (`Prefer: respond-async`) on layout B's processes, jobs.replicas=REPLICAS
#      (3): CPU per submit, counted until the work queue is drained (the merge each submit
#      runs included), and the node that leads the stream BUSGATE_REQUESTS
#   F  one nats-server, a native worker serving n1…n8, the bench settings' fan-out routes
#      fan1, fan2, fan4, fan8: CPU per request per width
# Each measurement: a WARMUP (2) s warm-up, then DURATION (10) s of `wrk -t2 -c64` (two
# gateways: `wrk -t1 -c32` on each at once); utime + stime of every process from
# /proc/<pid>/stat before and after. Prints req/s and, per process, CPU µs per request and the
# cores it used; a summary at the end (also in $OUT when set).
#
# The gateways' settings come from `busgate-bench --print-settings merge` (F: `bench`), the
# NATS URL of the node each one is on from BUSGATE_NATS__URL (one URL: a client stays on its
# node). The nginx services are the peers' (tests/perf/peers/peers.sh; started when nothing
# answers on :18091, and stopped again). Needs wrk, curl, python3, nginx (the peers) and
# nats-server (the pinned one, deploy/install-nats.sh, unless NATS_SERVER names one).
# Everything it starts (wrk included) is stopped when it ends: done, failed, SIGINT or SIGTERM.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${1:-$HERE/../../target/release}" && pwd) || exit 64
for b in busgate busgate-worker; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing: cargo build --release --workspace --bins" >&2; exit 64; }
done
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPLICAS=${REPLICAS:-3}
LAYOUTS=${LAYOUTS:-A B C D E F}
PEERS=${PEERS:-$HERE/peers/peers.sh}
PEERS_DIR=${PEERS_DIR:-/tmp/busgate-peers}
PEER=http://127.0.0.1:${MERGE:-18091}/api/orders/12345
UP1=${UP1:-18081} UP2=${UP2:-18082}
. "$HERE/merge-stack.sh"
BENCH=$(bench_bin "$BIN") || exit 2
TICK_US=$((1000000 / $(getconf CLK_TCK)))

PIDS=()    # the processes of the layout being measured
INFRA=()   # the cluster's nodes, kept over layouts B…E
LOAD=()    # the wrk runs in progress
SUMMARY=() # one line per process and layout
URL=() MON=() NODE=() ROUTE=() # per node index 1…3: client URL, monitoring port, pid, route port

# stop_pids PID…: SIGTERM, then (bounded: 10 s each) SIGKILL, and reaped.
stop_pids() {
  local p
  for p in "$@"; do kill "$p" 2> /dev/null; done
  for p in "$@"; do
    for _ in $(seq 100); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$p" 2> /dev/null
    wait "$p" 2> /dev/null
  done
}
stop_layout() { [ ${#PIDS[@]} -eq 0 ] || stop_pids "${PIDS[@]}"; PIDS=(); }

cleanup() {
  [ ${#LOAD[@]} -eq 0 ] || stop_pids "${LOAD[@]}"
  stop_layout
  # start_merge_stack's, when it exited before they were handed over to PIDS.
  stop_pids ${G:-} ${W:-} ${W2:-} ${N:-}
  [ ${#INFRA[@]} -eq 0 ] || stop_pids "${INFRA[@]}"
  INFRA=()
  [ -n "${started_peers:-}" ] && "$PEERS" stop > /dev/null 2>&1
  rm -rf "${D:-/nonexistent}"
}
with_merge_peer
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fail WHY: says why, with the tail of every log, and exits (the trap stops everything).
fail() {
  echo "cluster-sizing: $1" >&2
  tail -n 5 "$D"/*.log >&2 2> /dev/null
  exit 1
}

# wait_for SECONDS WHAT COMMAND…: polls COMMAND every POLL (0.1) s until it succeeds, bounded.
wait_for() {
  local seconds=$1 what=$2 until=$((SECONDS + $1)); shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$until" ] || fail "$what: not within $seconds s"
    sleep "${POLL:-0.1}"
  done
}

# spawn LOG COMMAND…: runs COMMAND in the background, its output in $D/LOG.log; pid in LAST.
spawn() {
  local log=$1; shift
  "$@" > "$D/$log.log" 2>&1 &
  LAST=$!
  PIDS+=("$LAST")
}

# The nginx services' processes (master and workers), comma-separated.
nginx_pids() {
  local master
  master=$(cat "$PEERS_DIR/services.pid" 2> /dev/null) || return 0
  echo "$master$(pgrep -P "$master" | sed 's/^/,/' | tr -d '\n')"
}

# ticks PID[,PID…]: their utime + stime so far, in clock ticks (0 for one that is gone).
ticks() {
  local total=0 p line rest
  local -a f
  for p in ${1//,/ }; do
    read -r line < "/proc/$p/stat" 2> /dev/null || continue
    rest=${line##*) }
    read -r -a f <<< "$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

monitor() { curl -sf --max-time 2 "http://127.0.0.1:$1$2"; }

# One node's nats-server configuration: NAME PORT MONITOR [ROUTE ROUTES]; a cluster node (with
# ROUTE) has JetStream, with a store of its own.
node_conf() {
  local name=$1 port=$2 mon=$3 route=${4:-} routes=${5:-}
  mkdir -p "$D/$name"
  {
    printf 'server_name: %s\nlisten: "127.0.0.1:%s"\nhttp: "127.0.0.1:%s"\n' "$name" "$port" "$mon"
    [ -n "$route" ] || return 0
    printf 'jetstream { store_dir: "%s/store" }\n' "$D/$name"
    # Routes pinged every second, as tests/src/cluster.rs does.
    printf 'cluster {\n  name: busgate-sizing\n  listen: "127.0.0.1:%s"\n  ping_interval: "1s"\n  routes: [%s]\n}\n' "$route" "$routes"
  } > "$D/$name/nats.conf"
}

# Every node sees a JetStream meta leader of a 3-node cluster.
meta_ready() {
  local i
  for i in 1 2 3; do
    monitor "${MON[$i]}" /jsz | python3 -c '
import json, sys
m = json.load(sys.stdin).get("meta_cluster") or {}
sys.exit(0 if m.get("leader") and m.get("cluster_size") == 3 else 1)' || return 1
  done
}

# start_cluster: nodes n1, n2, n3 (URL[i], MON[i], NODE[i]), routes between all, JetStream.
start_cluster() {
  local i routes="" sep=""
  for i in 1 2 3; do
    URL[i]=nats://127.0.0.1:$(port); MON[i]=$(port); ROUTE[i]=$(port)
    routes+="$sep\"nats-route://127.0.0.1:${ROUTE[i]}\""; sep=", "
  done
  for i in 1 2 3; do
    node_conf "n$i" "${URL[i]##*:}" "${MON[i]}" "${ROUTE[i]}" "$routes"
    "$NATS_SERVER" -c "$D/n$i/nats.conf" > "$D/nats-n$i.log" 2>&1 &
    NODE[i]=$!
    INFRA+=("${NODE[i]}")
  done
  wait_for 60 "a JetStream meta leader of the 3-node cluster" meta_ready
}

# start_single: one nats-server without JetStream, node index 1 of URL/MON/NODE.
start_single() {
  URL[1]=nats://127.0.0.1:$(port); MON[1]=$(port)
  node_conf single "${URL[1]##*:}" "${MON[1]}"
  spawn nats-single "$NATS_SERVER" -c "$D/single/nats.conf"
  NODE[1]=$LAST
  wait_for 30 "nats-server answering /healthz" monitor "${MON[1]}" /healthz > /dev/null
}

# start_adapters NAME NATS_URL: one adapter process serving n1 and n2 (the nginx services).
start_adapters() {
  spawn "$1" env BUSGATE_NATS__URL="$2" BUSGATE_LOG__LEVEL=warn "$BIN/busgate-worker" adapter \
    --service n1 --upstream "http://127.0.0.1:$UP1/order/{order_id}" \
    --service n2 --upstream "http://127.0.0.1:$UP2/order/{order_id}"
}

# start_gateway NAME NATS_URL SETTINGS_NAME: a gateway on that node; its base URL in BASE.
start_gateway() {
  local hp ap
  hp=$(port); ap=$(port)
  "$BENCH" --print-settings "$3" > "$D/$1.toml" || fail "busgate-bench --print-settings $3"
  spawn "$1" env BUSGATE_NATS__URL="$2" BUSGATE_LOG__LEVEL=warn BUSGATE_JOBS__REPLICAS="${GW_REPLICAS:-1}" \
    BUSGATE_HTTP__LISTEN="127.0.0.1:$hp" BUSGATE_ADMIN__LISTEN="127.0.0.1:$ap" \
    "$BIN/busgate" gateway --config "$D/$1.toml"
  BASE=http://127.0.0.1:$hp
}

# A merge that carries both sources' answers (n2 is optional: a 200 alone does not say it came).
merged() {
  local body
  body=$(curl -sf --max-time 3 "$1") || return 1
  [[ $body == *shipped* && $body == *carrier* ]]
}
answers() { curl -sf --max-time 3 -o /dev/null "$1"; }

# The stream BUSGATE_REQUESTS as a node sees it: "LEADER REPLICAS MESSAGES" (nothing when that
# node holds no replica).
stream_state() {
  monitor "$1" '/jsz?accounts=true&streams=true&config=true' | python3 -c '
import json, sys
for a in json.load(sys.stdin).get("account_details") or []:
    for s in a.get("stream_detail") or []:
        if s.get("name") == "BUSGATE_REQUESTS":
            c = s.get("cluster") or {}
            print(c.get("leader", "-"), (s.get("config") or {}).get("num_replicas", "?"), s["state"]["messages"])
            sys.exit(0)'
}
# The stream's leader's view (the single node's when there is no cluster).
leader_state() {
  local i st
  for i in "${!MON[@]}"; do
    st=$(stream_state "${MON[i]}") || continue
    [ -n "$st" ] || continue
    if [ "${st%% *}" = "n$i" ] || [ ${#MON[@]} -eq 1 ]; then echo "$st"; return 0; fi
  done
  return 1
}
# Whether the work queue is empty, on the leader found before the load (LEADER_MON): one
# monitoring request per poll (polled every 0.25 s: the monitoring costs nats-server CPU too).
drained() {
  local st
  st=$(stream_state "$LEADER_MON") && [ -n "$st" ] && [ "${st##* }" = 0 ]
}
leader_mon() {
  local i st
  for i in "${!MON[@]}"; do
    st=$(stream_state "${MON[i]}") || continue
    if [ "${st%% *}" = "n$i" ] || { [ ${#MON[@]} -eq 1 ] && [ -n "$st" ]; }; then echo "${MON[i]}"; return 0; fi
  done
  return 1
}

# Client connections per node (from /connz), as "n1=3 n2=1 n3=0".
placement() {
  local i out=""
  for i in "${!MON[@]}"; do
    out+="n$i=$(monitor "${MON[i]}" /connz | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_connections"])' 2> /dev/null || echo '?') "
  done
  echo "${out% }"
}

# measure LABEL URLS HEADER NAME:PID[,PID…]…: the warm-up, then the measured wrk run(s) (one
# per URL in the space-separated URLS, at once), CPU per request of every process. With
# HEADER "Prefer: respond-async" the CPU is counted until the work queue is drained.
measure() {
  local label=$1 urls=$2 header=$3 threads=2 conns=64 u i n=0 requests=0 rps=0 bad="" t0 t1 spec
  local -a hdr=() before=()
  shift 3
  [ -n "$header" ] && hdr=(-H "$header")
  read -r -a urls <<< "$urls"
  if [ ${#urls[@]} -gt 1 ]; then threads=1; conns=$((64 / ${#urls[@]})); fi
  for u in "${urls[@]}"; do wrk -t"$threads" -c"$conns" -d"${WARMUP}s" "${hdr[@]}" "$u" > /dev/null & LOAD+=($!); done
  wait "${LOAD[@]}"; LOAD=()
  if [ -n "$header" ]; then
    wait_for 30 "a node leading the stream BUSGATE_REQUESTS" leader_mon > /dev/null
    LEADER_MON=$(leader_mon) || fail "$label: no node leads the stream BUSGATE_REQUESTS"
    POLL=0.25 wait_for 60 "the warm-up's submits drained" drained
  fi
  for spec in "$@"; do before+=("$(ticks "${spec#*:}")"); done
  t0=$(date +%s.%N)
  for u in "${urls[@]}"; do
    wrk -t"$threads" -c"$conns" -d"${DURATION}s" "${hdr[@]}" "$u" > "$D/wrk.$n.txt" & LOAD+=($!); n=$((n + 1))
  done
  wait "${LOAD[@]}"; LOAD=()
  local drain="" sustained=""
  if [ -n "$header" ]; then
    POLL=0.25 wait_for 120 "the submits drained" drained
  fi
  t1=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    requests=$((requests + $(awk '/requests in/ {print $1}' "$D/wrk.$i.txt")))
    rps=$(python3 -c "print(round($rps + $(awk '/Requests\/sec/ {print $2}' "$D/wrk.$i.txt")))")
    bad+=$(grep -E 'Non-2xx|Socket errors' "$D/wrk.$i.txt" | tr -s ' \n' ' ')
  done
  [ "$requests" -gt 0 ] || fail "$label: no request answered"
  if [ -n "$header" ]; then
    # Accepted at wrk's rate, completed by t1: what the processes sustain is the lower rate.
    drain=$(python3 -c "print(f'{$t1 - $t0 - $DURATION:.1f}')")
    sustained=$(python3 -c "print(round($requests / ($t1 - $t0)))")
  fi
  printf '\n== %s: %s req/s (%s requests%s)\n' "$label" "$rps" "$requests" \
    "${drain:+; the work queue drained ${drain} s after the load: $sustained completed/s sustained}"
  [ -n "$bad" ] && printf '   NOT ALL 2xx, do not use these figures: %s\n' "$bad"
  [ -n "${MON[1]:-}" ] && printf '   client connections per node: %s\n' "$(placement)"
  SUMMARY+=("$(printf '%-30s %-22s %9s req/s%s' "$label" "(all)" "$rps" "${sustained:+, $sustained completed/s}")")
  local total=0
  i=0
  for spec in "$@"; do
    local name=${spec%%:*} d us cores
    d=$(($(ticks "${spec#*:}") - before[i]))
    us=$(python3 -c "print(f'{$d * $TICK_US / $requests:.1f}')")
    cores=$(python3 -c "print(f'{$d * $TICK_US / 1e6 / ($t1 - $t0):.2f}')")
    printf '   %-22s %7s us CPU per request  %5s cores\n' "$name" "$us" "$cores"
    SUMMARY+=("$(printf '%-30s %-22s %9s us  %5s cores' "$label" "$name" "$us" "$cores")")
    total=$((total + d))
    i=$((i + 1))
  done
  us=$(python3 -c "print(f'{$total * $TICK_US / $requests:.1f}')")
  printf '   %-22s %7s us CPU per request\n' "(every process)" "$us"
  SUMMARY+=("$(printf '%-30s %-22s %9s us' "$label" "(every process)" "$us")")
}

layout_a() {
  ADAPTERS=1 ADAPTER_PROCESSES=1 NATS_TLS= SETTINGS=merge start_merge_stack "$BIN" "$D"
  PIDS+=("$G" "$W" "$N")
  local g=$G w=$W n=$N
  local -a MON=() # no monitoring port on merge-stack.sh's node
  unset G W W2 N
  measure "A one node" "$URL" "" gateway:$g adapters:$w nats-server:$n nginx-services:"$(nginx_pids)"
  stop_layout
}

# The cluster layouts: gateways on GATEWAY_NODES, adapter processes on ADAPTER_NODES.
cluster_layout() {
  local label=$1 gateway_nodes=$2 adapter_nodes=$3 header=${4:-} i urls="" specs=() gateways=()
  for i in $adapter_nodes; do
    start_adapters "adapters-n$i" "${URL[i]}"
    specs+=("adapters@n$i:$LAST")
  done
  for i in $gateway_nodes; do
    GW_REPLICAS=$REPLICAS start_gateway "gateway-n$i" "${URL[i]}" merge
    gateways+=("gateway@n$i:$LAST")
    urls+=" $BASE/bench/merge/12345"
    wait_for 60 "gateway on n$i merging both sources" merged "$BASE/bench/merge/12345"
  done
  for i in 1 2 3; do specs+=("nats-server n$i:${NODE[i]}"); done
  specs+=("nginx-services:$(nginx_pids)")
  measure "$label" "$urls" "$header" "${gateways[@]}" "${specs[@]}"
  if [ -n "$header" ]; then
    local st
    st=$(leader_state) || st="? ? ?"
    read -r leader replicas _ <<< "$st"
    printf '   stream BUSGATE_REQUESTS: leader %s, %s replicas\n' "$leader" "$replicas"
    SUMMARY+=("$(printf '%-30s stream leader %s (R%s)' "$label" "$leader" "$replicas")")
  fi
  stop_layout
}

layout_f() {
  local w specs
  local -a URL=() MON=() NODE=()
  start_single
  local services=()
  for w in 1 2 3 4 5 6 7 8; do services+=(--service "n$w"); done
  spawn native env BUSGATE_NATS__URL="${URL[1]}" BUSGATE_LOG__LEVEL=warn "$BIN/busgate-worker" native "${services[@]}"
  specs=("native-worker:$LAST")
  start_gateway gateway "${URL[1]}" bench
  specs=("gateway:$LAST" "${specs[@]}" "nats-server:${NODE[1]}")
  for w in 1 2 4 8; do
    wait_for 60 "gateway answering fan$w" answers "$BASE/bench/fan$w/12345"
    measure "F fan-out $w" "$BASE/bench/fan$w/12345" "" "${specs[@]}"
  done
  stop_layout
}

started=$(date +%s)
echo "cluster-sizing: $BIN, ${DURATION} s per measurement after ${WARMUP} s of warm-up, layouts: $LAYOUTS"
for layout in $LAYOUTS; do
  case $layout in
    A) layout_a ;;
    B | C | D | E)
      [ ${#INFRA[@]} -gt 0 ] || start_cluster
      case $layout in
        B) cluster_layout "B cluster, all on n1" 1 1 ;;
        C) cluster_layout "C cluster, gw n1, adapters n2" 1 2 ;;
        D) cluster_layout "D cluster, gw n1+n2, ad n2+n3" "1 2" "2 3" ;;
        E) cluster_layout "E async, all on n1, R$REPLICAS" 1 1 "Prefer: respond-async" ;;
      esac ;;
    F) [ ${#INFRA[@]} -eq 0 ] || { stop_pids "${INFRA[@]}"; INFRA=(); }; layout_f ;;
    *) echo "cluster-sizing: no layout $layout (A B C D E F)" >&2; exit 64 ;;
  esac
done
printf '\nSummary (CPU per request of each process; cores it used while measured):\n'
printf '%s\n' "${SUMMARY[@]}" | tee ${OUT:+"$OUT"}
echo "cluster-sizing: done in $(($(date +%s) - started)) s"
