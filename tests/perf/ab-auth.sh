#!/usr/bin/env bash
# Scenario 3 of the benchmark (a merge of two native services) with and without clients, in one
# run, interleaved with the nginx + Lua merge peer: per round, anonymous (auth.mode = "none"),
# peer, keyed (auth required, X-API-Key of the client `bench`, a rate limit that never
# triggers), peer. Prints req/s of each, the ratio keyed / anonymous and each to the peer.
#   tests/perf/ab-auth.sh [BIN_DIR]      (default target/release; ROUNDS=3, SECONDS_PER_ROUND=10)
# Needs wrk, nats-server, and the peers (tests/perf/peers/peers.sh start; started here when
# nothing answers on :18091, and stopped again).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
PEERS=${PEERS:-$HERE/peers/peers.sh}
ROUNDS=${ROUNDS:-3} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
PEER=http://127.0.0.1:${MERGE:-18091}/api/orders/12345
# The bench client's key: a fixture (busgate-bench's BENCH_KEY), not a secret.
KEY=bgk_YnVzZ2F0ZSBiZW5jaG1hcmsga2V5IG5vdCBzZWNyZXQ
. "$HERE/merge-stack.sh"
with_merge_peer

ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }

anon_r=() keyed_r=() anon_p=() keyed_p=()
for round in $(seq "$ROUNDS"); do
  SETTINGS=merge CURL_HEADER=() WRK_HEADER=()
  start_merge_stack "$BINS" "$D"
  anon=$(rps "$URL"); stop_merge_stack
  peer1=$(rps "$PEER")
  SETTINGS=merge-keyed CURL_HEADER=(-H "X-API-Key: $KEY") WRK_HEADER=(-H "X-API-Key: $KEY")
  start_merge_stack "$BINS" "$D"
  # Keyed requests must really be admitted: a refused one would be cheap and flatter the figure.
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $KEY" "$URL")" = 200 ] || { echo "keyed request refused" >&2; exit 1; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL")" = 401 ] || { echo "keyless request not refused" >&2; exit 1; }
  keyed=$(rps -H "X-API-Key: $KEY" "$URL"); stop_merge_stack
  peer2=$(rps "$PEER")
  anon_p+=("$(ratio "$anon" "$peer1")") keyed_p+=("$(ratio "$keyed" "$peer2")") keyed_r+=("$(ratio "$keyed" "$anon")")
  printf 'round %s  anonymous %9s req/s  nginx+Lua %9s  keyed %9s req/s  nginx+Lua %9s  keyed/anonymous %s\n' \
    "$round" "$anon" "$peer1" "$keyed" "$peer2" "${keyed_r[-1]}"
done
med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
printf 'median keyed/anonymous: %s (rounds: %s)\n' "$(med "${keyed_r[@]}")" "${keyed_r[*]}"
printf 'median anonymous/nginx+Lua: %s (rounds: %s)\n' "$(med "${anon_p[@]}")" "${anon_p[*]}"
printf 'median keyed/nginx+Lua: %s (rounds: %s)\n' "$(med "${keyed_p[@]}")" "${keyed_p[*]}"
