#!/usr/bin/env bash
# Where the fixed-rate tail of the merge goes (issue 24, part 4). At one fixed rate (RATE,
# default 5800 req/s: half the adapters' peak in the committed report), for DURATION seconds
# each, with `oha -q RATE --latency-correction`:
#   native      the native merge (merge-stack.sh)
#   adapters    the merge through two adapter processes to the peers' nginx services
#   adapters1   the same adapters in one process
#   peer        the nginx + Lua merge of the same nginx services
# For each it prints the client's p50 / p99 / p99.9 and, to say where a slow request spent its
# time:
#   - the gateway's own view (Busgate only): the share of requests over 3.2 ms in its
#     `http_request_duration_seconds` (arrival to answer, inside the gateway) and of sources
#     over 3.2 ms in `source_duration_seconds` (publish to reply: the bus, the adapter and the
#     upstream). A tail the client sees but the gateway does not is before the gateway (the
#     load generator, the listener's accept queue, the kernel).
#   - per process: CPU µs per request, and the time its threads waited on a run queue
#     (`/proc/PID/task/*/schedstat`, field 2) per request, with the involuntary context
#     switches per request: time lost to scheduling, not to work.
#   tests/perf/tails.sh BIN_DIR            (RATE=5800 DURATION=15 CONNECTIONS=64)
# Needs oha (cargo install oha --locked), wrk, nats-server and the peers (started when
# nothing answers on :18091).
set -u
[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR" >&2; exit 64; }
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS=${PEERS:-$HERE/peers/peers.sh}
RATE=${RATE:-5800} DURATION=${DURATION:-15} CONNECTIONS=${CONNECTIONS:-64}
PEER=http://127.0.0.1:${MERGE:-18091}/api/orders/12345
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
[ -x "$OHA" ] || { echo "oha is missing: cargo install oha --locked" >&2; exit 2; }
. "$HERE/merge-stack.sh"
with_merge_peer

# snapshot FILE PID… : per pid "pid cpu_ticks run_ns wait_ns nonvoluntary" summed over threads.
snapshot() {
  local out=$1; shift
  python3 - "$@" > "$out" <<'EOF'
import os, sys
for pid in sys.argv[1:]:
    run = wait = nv = 0
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks = int(stat[11]) + int(stat[12])
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                r, w, _ = open(f"/proc/{pid}/task/{tid}/schedstat").read().split()
                run += int(r); wait += int(w)
                for line in open(f"/proc/{pid}/task/{tid}/status"):
                    if line.startswith("nonvoluntary_ctxt_switches"):
                        nv += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
    except FileNotFoundError:
        continue
    print(pid, ticks, run, wait, nv)
EOF
}

# measure NAME URL METRICS_URL|- NAME:PID…
measure() {
  local name=$1 url=$2 metrics=$3; shift 3
  local pids=() p
  for p in "$@"; do pids+=("${p#*:}"); done
  [ "$metrics" != - ] && curl -sf "$metrics" > "$D/m0"
  snapshot "$D/s0" "${pids[@]}"
  "$OHA" --no-tui --output-format json -c "$CONNECTIONS" -z "${DURATION}s" -q "$RATE" \
    --latency-correction "$url" > "$D/oha.json" 2> /dev/null
  snapshot "$D/s1" "${pids[@]}"
  [ "$metrics" != - ] && curl -sf "$metrics" > "$D/m1"
  python3 - "$name" "$D" "$metrics" "$@" <<'EOF'
import json, os, sys
name, d, metrics, procs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
v = json.JSONDecoder().raw_decode(open(f"{d}/oha.json").read().lstrip())[0]
p = v["latencyPercentiles"]
codes = v.get("statusCodeDistribution", {})
n = sum(codes.values())
# oha counts the requests still in flight when -z ends as errors ("aborted due to deadline"):
# not the server's.
errors = {k: c for k, c in v.get("errorDistribution", {}).items() if "deadline" not in k}
bad = n - codes.get("200", 0) + sum(errors.values())
print(f"{name}: {v['summary']['requestsPerSec']:.0f} req/s, p50 {p['p50']*1e3:.2f} / p99 {p['p99']*1e3:.2f} / p99.9 {p['p99.9']*1e3:.2f} ms, {bad} errors {errors or ''}")
if metrics != "-":
    def buckets(path, family):
        out = {}
        for line in open(path):
            if line.startswith(f"busgate_{family}_bucket"):
                le = line.split('le="')[1].split('"')[0]
                out[le] = out.get(le, 0) + float(line.rsplit(" ", 1)[1])
        return out
    for family, what in (("http_request_duration_seconds", "requests"), ("source_duration_seconds", "sources")):
        a, b = buckets(f"{d}/m0", family), buckets(f"{d}/m1", family)
        total = b.get("+Inf", 0) - a.get("+Inf", 0)
        if total <= 0:
            continue
        shares = []
        for le in ("0.0008", "0.0016", "0.0032", "0.0064"):
            under = b.get(le, 0) - a.get(le, 0)
            shares.append(f"> {float(le)*1e3:g} ms {100*(total-under)/total:.2f} %")
        print(f"  gateway's {what}: " + ", ".join(shares))
s0 = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(f"{d}/s0")}
s1 = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(f"{d}/s1")}
tick = os.sysconf("SC_CLK_TCK")
sums = {}
for proc in procs:
    pname, pid = proc.split(":", 1)
    if pid not in s0 or pid not in s1:
        continue
    dt = [b - a for a, b in zip(s0[pid], s1[pid])]
    sums[pname] = [x + y for x, y in zip(sums.get(pname, [0] * len(dt)), dt)]
for pname, dt in sums.items():
    print(f"  {pname:<14} CPU {dt[0]/tick*1e6/max(n,1):6.1f} us, run-queue wait {dt[2]/1e3/max(n,1):6.1f} us, "
          f"preempted {dt[3]/max(n,1):.3f} per request")
EOF
}

# An nginx's master (its command line names the configuration) and its workers.
pids_of() { local m; for m in $(pgrep -f "$1"); do echo "$m"; pgrep -P "$m"; done | tr '\n' ' '; }
services=$(for p in $(pids_of "services.nginx.conf"); do printf 'nginx-services:%s ' "$p"; done)

echo "tails at $RATE req/s, $DURATION s each, $CONNECTIONS connections (oha -q, latency corrected)"
for mode in native adapters adapters1; do
  case $mode in
    native) unset ADAPTERS ADAPTER_PROCESSES ;;
    adapters) export ADAPTERS=1; unset ADAPTER_PROCESSES ;;
    adapters1) export ADAPTERS=1 ADAPTER_PROCESSES=1 ;;
  esac
  start_merge_stack "$1" "$D"
  procs="gateway:$G nats-server:$N worker:$W"
  [ -n "$W2" ] && procs="$procs worker2:$W2"
  [ "$mode" != native ] && procs="$procs $services"
  # shellcheck disable=SC2086 # one word per process
  measure "$mode" "$URL" "${URL%/bench/*}/metrics" $procs
  stop_merge_stack
done
gateways=$(for p in $(pids_of "gateways.nginx.conf"); do printf 'nginx-merge:%s ' "$p"; done)
# shellcheck disable=SC2086 # one word per process
measure "peer (nginx + Lua)" "$PEER" - $gateways $services
