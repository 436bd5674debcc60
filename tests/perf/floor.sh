#!/usr/bin/env bash
# How close Busgate's native merge comes to the floor of its architecture, beside nginx + Lua:
# interleaved rounds of wrk -t2 -c64 against
#   busgate     the gateway, route /bench/merge (n1 + n2 on one native worker)
#   floor       gateway/examples/floor.rs: bare axum + async-nats scatter-gather, no headers
#   floor+hdr   the same with the contract's four NATS headers on each request
#   nginx+lua   the peers' merge (tests/perf/peers/peers.sh start, port 18091)
# All three of ours share one nats-server and one native worker.
#   tests/perf/floor.sh [ROUNDS] [SECONDS]
# With CPU=1 it then prints, for each of ours, the CPU time per request of its gateway, the
# native worker and nats-server (perf stat under the same load): what the headers cost each.
# Needs: cargo build --release --workspace --bins && cargo build --release -p busgate-gateway --example floor
set -u
ROUNDS=${1:-3}; SECS=${2:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BINS=${BINS:-$ROOT/target/release}
FLOOR=$BINS/examples/floor
[ -x "$FLOOR" ] || { echo "build the floor first: cargo build --release -p busgate-gateway --example floor" >&2; exit 2; }
curl -sf http://127.0.0.1:18091/api/orders/1 > /dev/null || { echo "start the peers first: tests/perf/peers/peers.sh start" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d)}
. "$(dirname "$0")/merge-stack.sh"
start_merge_stack "$BINS" "$OUT"
fp=$(port); fhp=$(port)
NATS=$NATS_URL LISTEN=127.0.0.1:$fp "$FLOOR" > "$OUT/floor.log" 2>&1 & F=$!
NATS=$NATS_URL LISTEN=127.0.0.1:$fhp FLOOR_HEADERS=1 "$FLOOR" > "$OUT/floor-hdr.log" 2>&1 & FH=$!
trap 'kill $F $FH 2>/dev/null; stop_merge_stack' EXIT
for p in $fp $fhp; do for _ in $(seq 50); do curl -sf "http://127.0.0.1:$p/m/12345" > /dev/null && break; sleep 0.1; done; done
names=(busgate floor floor+hdr nginx+lua)
urls=("$URL" "http://127.0.0.1:$fp/m/12345" "http://127.0.0.1:$fhp/m/12345" "http://127.0.0.1:18091/api/orders/12345")
for u in "${urls[@]}"; do wrk -t2 -c64 -d2s "$u" > /dev/null; done
for r in $(seq "$ROUNDS"); do
  for i in "${!names[@]}"; do
    rps=$(wrk -t2 -c64 -d"${SECS}s" "${urls[$i]}" | awk '/Requests\/sec/ {print $2}')
    echo "$r ${names[$i]} $rps"
  done
done | tee "$OUT/rounds.txt" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
rounds = {}
for r, name, rps in rows:
    rounds.setdefault(r, {})[name] = float(rps)
    print(f"round {r}  {name:10} {float(rps):9.0f} req/s", flush=True)
names = ["busgate", "floor", "floor+hdr"]
print("\nratio to nginx+lua per round, median:")
for n in names:
    ratios = [v[n] / v["nginx+lua"] for v in rounds.values()]
    print(f"  {n:10} " + "  ".join(f"{x:.2f}" for x in ratios) + f"   median {statistics.median(ratios):.2f}")
ratios = [v["busgate"] / v["floor+hdr"] for v in rounds.values()]
print(f"  busgate / floor+hdr: " + "  ".join(f"{x:.2f}" for x in ratios) + f"   median {statistics.median(ratios):.2f}")
'
echo "(raw rounds in $OUT/rounds.txt)"
[ -n "${CPU:-}" ] || exit 0
for i in 0 1 2; do
  gw=$G; [ "$i" = 1 ] && gw=$F; [ "$i" = 2 ] && gw=$FH
  echo; echo "${names[$i]}:"
  cpu_per_request "${urls[$i]}" gateway:$gw worker:$W nats-server:$N
done
