#!/usr/bin/env bash
# Where a merged request's cost goes on each path, per process and per NATS connection: the
# same merge (route /bench/merge, sources n1 and n2) served four ways, each measured alone,
#   native     one `busgate-worker native` process serving n1 and n2 (one connection)
#   native2    two native processes, n1 and n2 (two connections, replies from two processes)
#   adapters   two `busgate-worker adapter` processes to the peers' nginx services
#   adapters1  one adapter process serving both (one connection; a runtime thread per service)
#   adapters1t1  the same with one runtime thread (BUSGATE_WORKER_THREADS=1; not in the default MODES)
# and for each, under `wrk -t2 -c64` (full load) and paced (`wrk` with a fixed delay between a
# connection's requests, so both paths run at about the same rate):
#   - CPU µs, system calls (read, recvfrom, write, writev, sendto, epoll, futex) and context
#     switches per request of each process (`perf stat`, 5 s),
#   - messages and bytes in/out per request of each connection to nats-server (its monitoring
#     endpoint `/connz`, before and after the same 5 s),
#   - full load only: each socket's reads and writes per request (those that moved bytes; the
#     EAGAIN ones apart) and bytes per call, for
#     nats-server, the gateway and the workers (`perf record` of the syscall tracepoints, 2 s,
#     file descriptors mapped to the peer process through /proc/net/tcp),
#   - with CAPTURE=1 (default), one request and its replies as they cross the bus
#     (tests/perf/nats-capture.py on `busgate.svc.>` and `_INBOX.>`),
#   - for the modes in PROFILE_MODES (default "native adapters"), `perf record -e cpu-clock` of
#     the gateway (DWARF call graphs) and nats-server (frame pointers) under full load; the
#     reports are written at the end, once nothing is measured any more.
#   tests/perf/msgs-per-request.sh [BIN_DIR]       (BIN_DIR default target/release)
# MODES (default "native adapters native2 adapters1"), ROUNDS (1), DELAY_MS (8: the paced
# runs' delay, 64 connections), OUT (a temp dir: results.tsv, captures, perf data and reports).
# Needs perf (Debian linux-perf), wrk, curl, python3, the pinned nats-server (NATS_SERVER), and
# for the adapter modes the peers' services (started here when nothing answers at UP1).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
OUT=${OUT:-$(mktemp -d)}
MODES=${MODES:-native adapters native2 adapters1}
PROFILE_MODES=${PROFILE_MODES:-native adapters}
ROUNDS=${ROUNDS:-1}
DELAY_MS=${DELAY_MS:-8}
CAPTURE=${CAPTURE:-1}
UP1=${UP1:-18081} UP2=${UP2:-18082}
. "$HERE/merge-stack.sh"
mkdir -p "$OUT"
TSV=$OUT/results.tsv
[ -f "$TSV" ] || printf 'mode\tround\trun\twho\tmetric\tvalue\n' > "$TSV"
printf 'function delay()\n  return %s\nend\n' "$DELAY_MS" > "$OUT/paced.lua"

started_peers=
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null; done
  [ -n "$started_peers" ] && "$HERE/peers/peers.sh" stop > /dev/null 2>&1
}
trap cleanup EXIT

# start MODE: nats-server (with monitoring on MPORT), the workers of MODE and a gateway; sets
# WHO (name:pid …), NP (NATS port), URL.
start() {
  local mode=$1 dir=$OUT/$1 hp ap bench env
  mkdir -p "$dir"
  bench=$(bench_bin "$BINS") || exit 2
  "$bench" --print-settings merge > "$dir/gw.toml" || exit 2
  NP=$(port); MPORT=$(port); hp=$(port); ap=$(port)
  "$NATS_SERVER" -a 127.0.0.1 -p "$NP" -m "$MPORT" > "$dir/nats.log" 2>&1 & N=$!
  PIDS=("$N")
  WHO=("nats-server:$N")
  env=(BUSGATE_NATS__URL=nats://127.0.0.1:$NP BUSGATE_LOG__LEVEL=warn)
  local w1 w2
  case $mode in
    native)
      env "${env[@]}" "$BINS/busgate-worker" native --service n1 --service n2 > "$dir/w.log" 2>&1 & w1=$! ;;
    native2)
      env "${env[@]}" "$BINS/busgate-worker" native --service n1 > "$dir/w.log" 2>&1 & w1=$!
      env "${env[@]}" "$BINS/busgate-worker" native --service n2 > "$dir/w2.log" 2>&1 & w2=$! ;;
    adapters)
      env "${env[@]}" "$BINS/busgate-worker" adapter --service n1 --upstream "http://127.0.0.1:$UP1/order/{order_id}" > "$dir/w.log" 2>&1 & w1=$!
      env "${env[@]}" "$BINS/busgate-worker" adapter --service n2 --upstream "http://127.0.0.1:$UP2/order/{order_id}" > "$dir/w2.log" 2>&1 & w2=$! ;;
    adapters1)
      env "${env[@]}" "$BINS/busgate-worker" adapter --service n1 --upstream "http://127.0.0.1:$UP1/order/{order_id}" \
        --service n2 --upstream "http://127.0.0.1:$UP2/order/{order_id}" > "$dir/w.log" 2>&1 & w1=$! ;;
    adapters1t1)
      # adapters1 with one runtime thread (the default before issue 24: one per service now).
      env "${env[@]}" BUSGATE_WORKER_THREADS=1 "$BINS/busgate-worker" adapter --service n1 --upstream "http://127.0.0.1:$UP1/order/{order_id}" \
        --service n2 --upstream "http://127.0.0.1:$UP2/order/{order_id}" > "$dir/w.log" 2>&1 & w1=$! ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  PIDS+=("$w1"); WHO+=("worker1:$w1")
  if [ -n "${w2:-}" ]; then PIDS+=("$w2"); WHO+=("worker2:$w2"); fi
  env "${env[@]}" BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap \
    "$BINS/busgate" gateway --config "$dir/gw.toml" > "$dir/g.log" 2>&1 & G=$!
  PIDS+=("$G"); WHO+=("gateway:$G")
  if [[ $mode == adapters* ]]; then
    local master
    master=$(cat "${PEERS_DIR:-/tmp/busgate-peers}/services.pid")
    WHO+=("nginx-services:$(pgrep -P "$master" | head -1)")
  fi
  URL=http://127.0.0.1:$hp/bench/merge/12345
  for _ in $(seq 100); do curl -sf "$URL" > /dev/null && break; sleep 0.1; done
  if ! curl -sf "$URL" > /dev/null; then
    echo "$mode does not answer 200 at $URL" >&2; tail -n 5 "$dir"/*.log >&2; exit 1
  fi
  wrk -t2 -c64 -d2s "$URL" > /dev/null
}

stop() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null; done
  PIDS=()
}

connz() { curl -s "http://127.0.0.1:$MPORT/connz?subs=1"; }

# stat_run MODE ROUND RUN WRK-ARGS…: 10 s of wrk; perf stat and /connz over 5 s of it.
stat_run() {
  local mode=$1 round=$2 run=$3 tmp p t0 t1; shift 3
  tmp=$(mktemp -d)
  wrk -t2 -c64 -d10s "$@" "$URL" > "$tmp/wrk.txt" & local wrk=$!
  sleep 2
  connz > "$tmp/connz.a"; t0=$(date +%s.%N)
  local perfs=()
  for p in "${WHO[@]}"; do
    perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex \
      -p "${p#*:}" -o "$tmp/stat.${p%%:*}" -- sleep 5 & perfs+=($!)
  done
  wait "${perfs[@]}"; t1=$(date +%s.%N); connz > "$tmp/connz.b"
  wait $wrk
  python3 - "$tmp" "$mode" "$round" "$run" "$t0" "$t1" "${WHO[@]}" >> "$TSV" << 'EOF'
import json, re, sys
tmp, mode, rnd, run, t0, t1, *who = sys.argv[1:]
wrk = open(f"{tmp}/wrk.txt").read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
lat = re.search(r"Latency\s+(\S+)", wrk).group(1)
non2xx = re.search(r"Non-2xx.*?(\d+)", wrk)
row = lambda who, metric, value: print(f"{mode}\t{rnd}\t{run}\t{who}\t{metric}\t{value}")
row("wrk", "req/s", rps); row("wrk", "mean latency", lat)
row("wrk", "non-2xx", non2xx.group(1) if non2xx else 0)
for w in who:
    name = w.split(":")[0]
    reqs = rps * 5
    for line in open(f"{tmp}/stat.{name}"):
        f = line.strip().split(",")
        if len(f) < 3 or not f[0].replace(".", "").isdigit():
            continue
        value, event = float(f[0]), f[2]
        if event == "task-clock":
            row(name, "cpu us/req", round(value * 1000 / reqs, 2))  # msec -> us
        else:
            row(name, event.replace("syscalls:sys_enter_", "") + "/req", round(value / reqs, 3))
a = {c["cid"]: c for c in json.load(open(f"{tmp}/connz.a"))["connections"]}
b = {c["cid"]: c for c in json.load(open(f"{tmp}/connz.b"))["connections"]}
reqs = rps * (float(t1) - float(t0))
for cid, c in b.items():
    if cid not in a or c.get("name") == "capture":
        continue
    name = c.get("name", "?")
    if name.startswith("busgate gateway"):
        name = "gateway (requests)" if name.endswith(" requests") else "gateway (async-nats)"
    for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes"):
        row(f"conn:{name}", f"{k}/req", round((c[k] - a[cid][k]) / reqs, 3))
EOF
  rm -rf "$tmp"
}

# fdmap PID…: JSON {pid: {fd: "local>remote" ports}} of their TCP sockets.
fdmap() {
  python3 - "$@" << 'EOF'
import json, os, sys
inodes = {}
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).readlines()[1:]:
        f = line.split()
        inodes[f[9]] = (int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16))
out = {}
for pid in sys.argv[1:]:
    m = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            ino = t[8:-1]
            if ino in inodes:
                m[fd] = inodes[ino]
    out[pid] = m
print(json.dumps(out))
EOF
}

# trace_run MODE ROUND: 6 s of wrk; the read/write system calls of every Busgate process and
# nats-server over 2 s of it, per socket.
trace_run() {
  local mode=$1 round=$2 tmp p ev="" s pids=()
  tmp=$(mktemp -d)
  for s in read recvfrom write writev sendto; do ev+="syscalls:sys_enter_$s,syscalls:sys_exit_$s,"; done
  for p in "${WHO[@]}"; do [[ $p == nginx* ]] || pids+=("${p#*:}"); done
  wrk -t2 -c64 -d6s "$URL" > "$tmp/wrk.txt" & local wrk=$!
  sleep 2
  fdmap "${pids[@]}" > "$tmp/fds.json"
  local perfs=()
  for p in "${WHO[@]}"; do
    [[ $p == nginx* ]] && continue
    perf record -q -e "${ev%,}" -p "${p#*:}" -o "$tmp/${p%%:*}.data" -- sleep 2 > /dev/null 2>&1 & perfs+=($!)
  done
  wait "${perfs[@]}"
  wait $wrk
  for p in "${WHO[@]}"; do
    [[ $p == nginx* ]] && continue
    perf script -i "$tmp/${p%%:*}.data" -F tid,event,trace 2> /dev/null > "$tmp/${p%%:*}.txt"
  done
  python3 - "$tmp" "$mode" "$round" "$NP" "${WHO[@]}" >> "$TSV" << 'EOF'
import collections, json, re, sys
tmp, mode, rnd, np, *who = sys.argv[1:]
np = int(np)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", open(f"{tmp}/wrk.txt").read()).group(1))
reqs = rps * 2
fds = json.load(open(f"{tmp}/fds.json"))
procs = {w.split(":")[0]: w.split(":")[1] for w in who if not w.startswith("nginx")}
# which process owns a local port
owner = {}
for name, pid in procs.items():
    for fd, (lp, rp) in fds.get(pid, {}).items():
        owner[lp] = name
def label(name, pid, fd):
    if fd not in fds.get(pid, {}):
        return None
    lp, rp = fds[pid][fd]
    if name == "nats-server":
        return "to " + owner.get(rp, f"port {rp}")
    if rp == np:
        return "nats"
    if rp in (18081, 18082):
        return "upstream"
    return "http"
for name, pid in procs.items():
    pending = {}
    calls = collections.Counter(); bytes_ = collections.Counter()
    for line in open(f"{tmp}/{name}.txt"):
        m = re.match(r"\s*(\d+)\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)", line)
        if not m:
            continue
        tid, kind, sc, rest = m.groups()
        if kind == "enter":
            fd = re.search(r"fd: (0x[0-9a-f]+)", rest)
            pending[tid] = (sc, str(int(fd.group(1), 16)) if fd else None)
        else:
            sc0, fd = pending.pop(tid, (None, None))
            if sc0 != sc or fd is None:
                continue
            where = label(name, pid, fd)
            if where is None:
                continue
            ret = re.search(r"(0x[0-9a-f]+|-?\d+)\s*$", rest).group(1)
            ret = int(ret, 16) if ret.startswith("0x") else int(ret)
            if ret >= 1 << 63:
                ret -= 1 << 64
            if ret < 0:
                calls[(where, sc + " (EAGAIN)")] += 1
                continue
            calls[(where, sc)] += 1
            bytes_[(where, sc)] += ret
    for (where, sc), n in sorted(calls.items()):
        print(f"{mode}\t{rnd}\ttrace\t{name} {where}\t{sc} calls/req\t{n / reqs:.3f}")
        if "EAGAIN" not in sc:
            print(f"{mode}\t{rnd}\ttrace\t{name} {where}\t{sc} bytes/call\t{bytes_[(where, sc)] / n:.1f}")
print(f"{mode}\t{rnd}\ttrace\twrk\treq/s\t{rps}")
EOF
  rm -rf "$tmp"
}

# profile_run MODE: 10 s of wrk; cpu-clock samples of the gateway and nats-server over 4 s.
profile_run() {
  local mode=$1
  wrk -t2 -c64 -d10s "$URL" > "$OUT/$mode/profile-wrk.txt" & local wrk=$!
  sleep 2
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$G" -o "$OUT/$mode/gateway.perf.data" -- sleep 4 > /dev/null 2>&1 & local p1=$!
  perf record -q -e cpu-clock -F 499 -g -p "$N" -o "$OUT/$mode/nats-server.perf.data" -- sleep 4 > /dev/null 2>&1 & local p2=$!
  wait $p1 $p2
  wait $wrk
}

# report MODE WHO: the top self-time symbols and the shares of stacks holding some patterns.
report() {
  local data=$OUT/$1/$2.perf.data
  [ -f "$data" ] || return 0
  {
    echo "== $1 $2 under $(awk '/Requests\/sec/ {print $2}' "$OUT/$1/profile-wrk.txt") req/s"
    perf report -i "$data" --no-children --sort dso --stdio -g none 2> /dev/null | grep -E '^ +[0-9]' | head -4
    perf report -i "$data" --no-children --sort symbol --stdio -g none 2> /dev/null | grep -E '^ +[0-9]' | cut -c1-120 | head -30
    perf script -i "$data" 2> /dev/null | "$(dirname "$0")/stack-shares.py" entry_SYSCALL_64 tcp_sendmsg tcp_recvmsg sock_read_iter sock_write_iter ep_poll __x64_sys_epoll futex_wait futex_wake \
      try_to_wake_up schedule finish_task_switch __tcp_transmit_skb tcp_v4_rcv net_rx_action \
      wire::connection busgate_shared::wire tokio::runtime::scheduler tokio::runtime::park Notify gather collector \
      hyper axum busgate_gateway::edge busgate_gateway::gather merge serde_json mimalloc \
      '(*client).readLoop' '(*client).writeLoop' '(*client).flushOutbound' '(*client).flushClients' \
      '(*client).processInboundClientMsg' '(*client).deliverMsg' '(*client).parse' 'runtime.schedule' \
      'runtime.findRunnable' 'runtime.netpoll' 'runtime.futex' 'runtime.mallocgc' 'runtime.gcBgMarkWorker' 'internal/poll.(*FD).Read' \
      'internal/poll.(*FD).Writev' 'internal/poll.(*FD).Write' 'runtime.usleep' 'runtime.stealWork' '(*client).processMsgResults'
  } > "$OUT/$1/$2.report.txt"
}

if [[ " $MODES " == *" adapters"* ]] && ! curl -sf "http://127.0.0.1:$UP1/order/1" > /dev/null; then
  "$HERE/peers/peers.sh" start > "$OUT/peers.log" 2>&1 || { cat "$OUT/peers.log" >&2; exit 1; }
  started_peers=1
fi

for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    echo "$(date +%T) round $round: $mode" >&2
    start "$mode"
    if [ "$CAPTURE" = 1 ] && [ "$round" = 1 ]; then
      python3 "$HERE/nats-capture.py" "$NP" 2 > "$OUT/$mode/capture.txt" & cap=$!
      for _ in $(seq 50); do grep -q ready "$OUT/$mode/capture.txt" 2> /dev/null && break; sleep 0.1; done
      curl -s -o "$OUT/$mode/merged.json" -D "$OUT/$mode/merged.head" "$URL"
      wait $cap
    fi
    stat_run "$mode" "$round" full
    stat_run "$mode" "$round" paced -s "$OUT/paced.lua"
    [ "$round" = 1 ] && trace_run "$mode" "$round"
    [ "$round" = 1 ] && [[ " $PROFILE_MODES " == *" $mode "* ]] && profile_run "$mode"
    stop
  done
done
cleanup; trap - EXIT
for mode in $PROFILE_MODES; do report "$mode" gateway; report "$mode" nats-server; done
# The figures side by side: one column per mode (the median of the rounds), one table per run.
python3 - "$TSV" $MODES << 'PY' | tee "$OUT/summary.txt"
import collections, statistics, sys
tsv, *modes = sys.argv[1:]
vals = collections.defaultdict(list)
order = []
for line in open(tsv).readlines()[1:]:
    mode, rnd, run, who, metric, value = line.rstrip("\n").split("\t")
    key = (run, who, metric)
    if key not in order:
        order.append(key)
    vals[key + (mode,)].append(value)
def med(v):
    try:
        return f"{statistics.median(float(x) for x in v):g}"
    except ValueError:
        return "/".join(v)
for run in ("full", "paced", "trace"):
    print(f"\n{run}\n| process | figure | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for key in order:
        if key[0] != run:
            continue
        cells = [med(vals[key + (m,)]) if vals[key + (m,)] else "" for m in modes]
        if all(c in ("", "0", "0.0") for c in cells):
            continue
        print(f"| {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
PY
echo "results in $OUT (results.tsv; per mode: capture.txt, *.report.txt, perf data)" >&2
