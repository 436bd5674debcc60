#!/usr/bin/env bash
# CPU time, system calls and context switches per request of each process on the native merge
# path (gateway, native worker, nats-server), measured with `perf stat` under `wrk -c64`.
# Compare builds in the same run:  tests/perf/cpu-per-request.sh /tmp/old-bins target/release
# Needs perf (Debian linux-perf), wrk, nats-server; a bin dir holds busgate and busgate-worker.
set -u
[ $# -ge 1 ] || set -- "$(cd "$(dirname "$0")/../.." && pwd)/target/release"
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
cat > "$D/gw.toml" <<'T'
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
one() {
  local bins=$1 np hp ap
  np=$(port); hp=$(port); ap=$(port)
  nats-server -a 127.0.0.1 -p "$np" > "$D/nats.log" 2>&1 & local N=$!
  export BUSGATE_NATS__URL=nats://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn
  "$bins/busgate-worker" native --service n1 --service n2 > "$D/w.log" 2>&1 & local W=$!
  BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap "$bins/busgate" gateway --config "$D/gw.toml" > "$D/g.log" 2>&1 & local G=$!
  local url=http://127.0.0.1:$hp/bench/merge/12345
  for _ in $(seq 100); do curl -sf "$url" > /dev/null && break; sleep 0.1; done
  wrk -t2 -c64 -d2s "$url" > /dev/null
  wrk -t2 -c64 -d10s "$url" > "$D/wrk.txt" & local WRK=$!
  sleep 2
  for p in $G $W $N; do perf stat -e raw_syscalls:sys_enter,context-switches,cpu-clock -p "$p" -o "$D/stat.$p" -- sleep 5 & done
  wait $WRK; sleep 1
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' "$D/wrk.txt")
  printf '%s: %s req/s\n' "$bins" "$rps"
  for p in gateway:$G worker:$W nats-server:$N; do
    awk -v n="${p%%:*}" -v rps="$rps" '
      /raw_syscalls/ {gsub(",","",$1); s=$1} /context-switches/ {gsub(",","",$1); c=$1} /cpu-clock/ {gsub(",","",$1); t=$1}
      END {printf "  %-12s %6.1f us CPU  %5.2f syscalls  %5.2f context switches per request\n", n, t*1000/(rps*5), s/(rps*5), c/(rps*5)}' "$D/stat.${p#*:}"
  done
  kill $G $W; wait $G $W 2>/dev/null; kill $N; wait $N 2>/dev/null
}
for bins in "$@"; do one "$bins"; done
