# Sourced by the scripts beside it: the native merge path (nats-server, a native worker serving
# n1 and n2, a gateway with route /bench/merge) on free ports, from the binaries in a directory.
# With ADAPTERS=1, n1 and n2 are two adapters to the peers' nginx services instead
# (tests/perf/peers/peers.sh start; ports UP1/UP2, default 18081/18082), in two processes, or
# in one with ADAPTER_PROCESSES=1.
#   start_merge_stack BIN_DIR WORK_DIR   sets N W G (pids; W2 for the second adapter), NATS_URL
#                                        and URL, waits until URL answers, then warms it up
#                                        with 2 s of wrk -c64
#   stop_merge_stack                     stops them
#   start_tls_gateway BIN_DIR WORK_DIR   a second gateway on the stack's NATS serving TLS itself
#                                        ([http.tls], a certificate from make_tls); sets GT (its
#                                        pid) and TLS_URL
#   cpu_per_request URL NAME:PID…        10 s of wrk -t2 -c64 on URL with 5 s of perf stat on
#                                        each PID; prints req/s, then per NAME the CPU time,
#                                        system calls and context switches per request
# With NATS_TLS=1 every connection (gateway's both, worker's) speaks TLS to a TLS-only
# nats-server whose certificate comes from a CA made for the run (openssl, in WORK_DIR).
# SETTINGS=merge-guarded: the same with a circuit breaker and retries (defaults) on n1 and n2.
# SETTINGS=merge-keyed: the same with API-key auth and a rate limit that never triggers (the
# requests carry the bench client's key: CURL_HEADER and WRK_HEADER, arrays, empty otherwise).
# The gateway's settings come from `busgate-bench --print-settings merge` (the fixture the tests
# and the benchmark use, tests/src/fixture.rs): the busgate-bench in BIN_DIR, else this
# checkout's release or debug build.
#   rps [WRK ARGS…] URL                  requests/s of SECONDS_PER_ROUND s of wrk -t2 -c64, or 0
#                                        when any answer was not a 2xx; WRK_CPUS=2,3 runs wrk on
#                                        those CPUs only (taskset), away from what it measures
#   with_merge_peer                      makes the work dir D, starts the peers when nothing answers
#                                        at PEER (stopping them again on exit, with the stack)
# The pinned nats-server (deploy/install-nats.sh), unless NATS_SERVER names one.
NATS_SERVER=${NATS_SERVER:-$("$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/deploy/install-nats.sh")}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_bin() {
  local root b
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  for b in "$1/busgate-bench" "$root/target/release/busgate-bench" "$root/target/debug/busgate-bench"; do
    [ -x "$b" ] && { echo "$b"; return 0; }
  done
  echo "busgate-bench is missing: cargo build --release -p busgate-tests --bin busgate-bench" >&2
  return 1
}

# A CA and a server certificate for 127.0.0.1 in $1, once.
make_tls() {
  [ -f "$1/server.pem" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$1/ca-key.pem" -out "$1/ca.pem" 2> /dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
    -keyout "$1/server-key.pem" -out "$1/server.csr" 2> /dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' > "$1/san.ext"
  openssl x509 -req -in "$1/server.csr" -CA "$1/ca.pem" -CAkey "$1/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$1/san.ext" -out "$1/server.pem" 2> /dev/null
}

start_merge_stack() {
  local bins=$1 dir=$2 np hp ap bench scheme=nats
  bench=$(bench_bin "$bins") || exit 2
  "$bench" --print-settings "${SETTINGS:-merge}" > "$dir/gw.toml" || exit 2
  np=$(port); hp=$(port); ap=$(port)
  if [ -n "${NATS_TLS:-}" ]; then
    make_tls "$dir"
    printf 'tls { cert_file: "%s/server.pem", key_file: "%s/server-key.pem" }\n' "$dir" "$dir" > "$dir/nats-tls.conf"
    "$NATS_SERVER" -c "$dir/nats-tls.conf" -a 127.0.0.1 -p "$np" > "$dir/nats.log" 2>&1 & N=$!
    export BUSGATE_NATS__CA_FILE=$dir/ca.pem
    scheme=tls
  else
    unset BUSGATE_NATS__CA_FILE
    "$NATS_SERVER" -a 127.0.0.1 -p "$np" > "$dir/nats.log" 2>&1 & N=$!
  fi
  W2=
  if [ -n "${ADAPTERS:-}" ] && [ "${ADAPTER_PROCESSES:-2}" = 1 ]; then
    BUSGATE_NATS__URL=$scheme://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn "$bins/busgate-worker" adapter \
      --service n1 --upstream "http://127.0.0.1:${UP1:-18081}/order/{order_id}" \
      --service n2 --upstream "http://127.0.0.1:${UP2:-18082}/order/{order_id}" > "$dir/w.log" 2>&1 & W=$!
  elif [ -n "${ADAPTERS:-}" ]; then
    BUSGATE_NATS__URL=$scheme://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn "$bins/busgate-worker" adapter \
      --service n1 --upstream "http://127.0.0.1:${UP1:-18081}/order/{order_id}" > "$dir/w.log" 2>&1 & W=$!
    BUSGATE_NATS__URL=$scheme://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn "$bins/busgate-worker" adapter \
      --service n2 --upstream "http://127.0.0.1:${UP2:-18082}/order/{order_id}" > "$dir/w2.log" 2>&1 & W2=$!
  else
    BUSGATE_NATS__URL=$scheme://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn \
      "$bins/busgate-worker" native --service n1 --service n2 > "$dir/w.log" 2>&1 & W=$!
  fi
  BUSGATE_NATS__URL=$scheme://127.0.0.1:$np BUSGATE_LOG__LEVEL=warn \
    BUSGATE_HTTP__LISTEN=127.0.0.1:$hp BUSGATE_ADMIN__LISTEN=127.0.0.1:$ap \
    "$bins/busgate" gateway --config "$dir/gw.toml" > "$dir/g.log" 2>&1 & G=$!
  NATS_URL=$scheme://127.0.0.1:$np
  URL=http://127.0.0.1:$hp/bench/merge/12345
  for _ in $(seq 100); do curl -sf ${CURL_HEADER[@]+"${CURL_HEADER[@]}"} "$URL" > /dev/null && break; sleep 0.1; done
  # A stack that does not answer 200 would be measured answering errors, fast: refuse.
  if ! curl -sf ${CURL_HEADER[@]+"${CURL_HEADER[@]}"} "$URL" > /dev/null; then
    echo "the merge stack of $bins does not answer 200 at $URL; its logs:" >&2
    tail -n 5 "$dir"/*.log >&2
    exit 1
  fi
  wrk -t2 -c64 -d2s ${WRK_HEADER[@]+"${WRK_HEADER[@]}"} "$URL" > /dev/null
}

start_tls_gateway() {
  local bins=$1 dir=$2 tp tap
  make_tls "$dir"
  tp=$(port); tap=$(port)
  BUSGATE_NATS__URL=$NATS_URL BUSGATE_LOG__LEVEL=warn \
    BUSGATE_HTTP__LISTEN=127.0.0.1:$tp BUSGATE_ADMIN__LISTEN=127.0.0.1:$tap \
    BUSGATE_HTTP__TLS__CERT_FILE=$dir/server.pem BUSGATE_HTTP__TLS__KEY_FILE=$dir/server-key.pem \
    "$bins/busgate" gateway --config "$dir/gw.toml" > "$dir/g-tls.log" 2>&1 & GT=$!
  TLS_URL=https://127.0.0.1:$tp/bench/merge/12345
}

stop_merge_stack() {
  kill "$G" "$W" $W2 2>/dev/null; wait "$G" "$W" $W2 2>/dev/null
  kill "$N" 2>/dev/null; wait "$N" 2>/dev/null
}

cpu_per_request() {
  local url=$1 dir wrk p rps; shift
  dir=$(mktemp -d)
  wrk -t2 -c64 -d10s "$url" > "$dir/wrk.txt" & wrk=$!
  sleep 2
  for p in "$@"; do
    perf stat -e raw_syscalls:sys_enter,context-switches,cpu-clock -p "${p#*:}" -o "$dir/stat.${p#*:}" -- sleep 5 &
  done
  wait $wrk; sleep 1
  rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")
  printf '  %s req/s\n' "$rps"
  for p in "$@"; do
    awk -v n="${p%%:*}" -v rps="$rps" '
      /raw_syscalls/ {gsub(",","",$1); s=$1} /context-switches/ {gsub(",","",$1); c=$1} /cpu-clock/ {gsub(",","",$1); t=$1}
      END {printf "  %-12s %6.1f us CPU  %5.2f syscalls  %5.2f context switches per request\n", n, t*1000/(rps*5), s/(rps*5), c/(rps*5)}' "$dir/stat.${p#*:}"
  done
  rm -rf "$dir"
}

with_merge_peer() {
  D=$(mktemp -d)
  started_peers=
  trap 'stop_merge_stack 2>/dev/null; [ -n "$started_peers" ] && "$PEERS" stop > /dev/null 2>&1; rm -rf "$D"' EXIT
  if ! curl -sf "$PEER" > /dev/null; then
    "$PEERS" start > "$D/peers.log" 2>&1 || { cat "$D/peers.log" >&2; exit 1; }
    started_peers=1
  fi
}

# Requests/s, or 0 (and why, on stderr) when any answer was not a 2xx: errors are fast and
# would flatter the figure.
rps() {
  local out
  out=$(${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t2 -c64 -d"${SECONDS_PER_ROUND}s" "$@")
  if grep -q "Non-2xx" <<< "$out"; then
    echo "answers that are not 2xx from ${*: -1}: $(grep Non-2xx <<< "$out")" >&2
    echo 0
    return
  fi
  awk '/Requests\/sec/ {print $2}' <<< "$out"
}
