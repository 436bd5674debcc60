#!/usr/bin/env bash
# Scenario 3 of the benchmark (a merge of two native services) for two or more builds of Busgate
# and the nginx + Lua merge peer, in one run, interleaved: build A, peer, build B, peer, … per
# round. Prints req/s of each and each build's median ratio to the peer.
#   tests/perf/ab-merge.sh OLD_BIN_DIR NEW_BIN_DIR [MORE…]      (ROUNDS=3, SECONDS_PER_ROUND=10)
# A bin dir written `tls:DIR` runs that build with every NATS connection over TLS
# (merge-stack.sh's NATS_TLS): `ab-merge.sh target/release tls:target/release` is plain TCP
# against TLS in one run. A bin dir written `otel:DIR` runs that build with every request
# traced and exported over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT, for the gateway and the
# worker) to a sink (tests/perf/otlp-sink.py): `ab-merge.sh target/release otel:target/release`
# is "no endpoint" against "every request traced" in one run (the issue's ≥ 90 % figure).
# A bin dir written `NAME@DIR` runs that build with the settings `busgate-bench
# --print-settings NAME` (default `merge`): `ab-merge.sh target/release
# merge-coalesce@target/release` is coalescing off against on in one run. With DISTINCT=1 every
# request asks for another order id (distinct-ids.lua), so that coalescing shares nothing: its
# cost alone; without it wrk asks for one order id, which coalescing collapses.
# A bin dir written `guarded:DIR` runs that build with a circuit breaker and retries on both
# services (busgate-bench --print-settings merge-guarded): `ab-merge.sh target/release
# guarded:target/release` is what the resilience guard costs, in one run.
# Needs wrk, nats-server, and the peers (tests/perf/peers/peers.sh start; this script starts
# them when nothing answers on :18091 and stops what it started). A bin dir holds busgate and
# busgate-worker; busgate-bench comes from this checkout (for the fixture's settings).
set -u
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN_DIR NEW_BIN_DIR [MORE…]" >&2; exit 64; }
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS=${PEERS:-$HERE/peers/peers.sh}
ROUNDS=${ROUNDS:-3} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
PEER=http://127.0.0.1:${MERGE:-18091}/api/orders/12345
. "$HERE/merge-stack.sh"
with_merge_peer


declare -A ratios
for round in $(seq "$ROUNDS"); do
  for bins in "$@"; do
    case $bins in
      tls:*) NATS_TLS=1 start_merge_stack "${bins#tls:}" "$D" ;;
      otel:*)
        sink_port=$(port)
        python3 "$HERE/otlp-sink.py" "$sink_port" 2>> "$D/otlp-sink.log" & SINK=$!
        OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink_port NATS_TLS= start_merge_stack "${bins#otel:}" "$D" ;;
      guarded:*) NATS_TLS= SETTINGS=merge-guarded start_merge_stack "${bins#guarded:}" "$D" ;;
      *@*) SETTINGS=${bins%%@*} NATS_TLS= start_merge_stack "${bins#*@}" "$D" ;;
      *) NATS_TLS= start_merge_stack "$bins" "$D" ;;
    esac
    if [ -n "${DISTINCT:-}" ]; then ours=$(rps -s "$HERE/distinct-ids.lua" "$URL"); else ours=$(rps "$URL"); fi
    stop_merge_stack
    if [ -n "${SINK:-}" ]; then kill "$SINK" 2> /dev/null; wait "$SINK" 2> /dev/null; SINK=; fi
    peer=$(rps "$PEER")
    ratio=$(python3 -c "print(f'{$ours/$peer:.2f}')")
    ratios[$bins]="${ratios[$bins]:-} $ratio"
    printf 'round %s  %-40s %9s req/s   nginx+Lua %9s req/s   ratio %s\n' "$round" "$bins" "$ours" "$peer" "$ratio"
  done
done
for bins in "$@"; do
  printf '%-40s median ratio to nginx + Lua: %s (rounds:%s)\n' "$bins" \
    "$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" ${ratios[$bins]})" "${ratios[$bins]}"
done
