#!/usr/bin/env bash
# TLS and HTTP/2 at the edge (issue 28), in one run, interleaved per round:
#   plain      Busgate's merge (scenario 3: two native services) over cleartext HTTP/1.1
#   tls        the same gateway binary serving TLS itself ([http.tls]), HTTP/1.1
#   haproxy    HAProxy terminating TLS in front of the cleartext gateway (one thread)
#   nginx      nginx terminating TLS as a 1-hop reverse proxy to the first service (one worker)
#   h1 / h2    with oha, over Busgate's TLS: HTTP/1.1 on 64 connections, and HTTP/2 with 64
#              streams on 4 connections (16 each); and oha's HTTP/1.1 over cleartext, for the
#              TLS / cleartext ratio with a second load generator (oha's TLS is rustls, wrk's
#              OpenSSL)
# Prints req/s of each and the ratios the issue asks for: tls/plain (target >= 0.9),
# h2/h1 (target >= 1), tls/haproxy and tls/nginx.
#   tests/perf/tls-edge.sh [BIN_DIR]   (default target/release; ROUNDS=3, SECONDS_PER_ROUND=10)
# STACK_CPUS=0 WRK_CPUS=1 puts the servers (nats-server, workers, both gateways, HAProxy,
# nginx) on CPU 0 and wrk on CPU 1, so that the load generator's own TLS work (OpenSSL reads
# a record's header and its body with two read calls) does not take CPU from the server side.
# Needs wrk (built with OpenSSL, as Debian's is), openssl, haproxy, nginx, nats-server, and the
# peers (tests/perf/peers/peers.sh start; started here when nothing answers on :18081, and
# stopped again). oha for the h2 figures (`cargo install oha --locked`); without it they are
# skipped and said so.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${1:-$HERE/../../target/release}
PEERS=${PEERS:-$HERE/peers/peers.sh}
ROUNDS=${ROUNDS:-3} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
PEER=http://127.0.0.1:${UP1:-18081}/order/7
. "$HERE/merge-stack.sh"
with_merge_peer
make_tls "$D"
cat "$D/server.pem" "$D/server-key.pem" > "$D/haproxy.pem"

start_merge_stack "$BINS" "$D"
PLAIN_URL=$URL
PLAIN_PORT=${URL#http://127.0.0.1:}; PLAIN_PORT=${PLAIN_PORT%%/*}

# The same gateway with TLS, on the stack's NATS and workers.
start_tls_gateway "$BINS" "$D"

# HAProxy: TLS in front of the cleartext gateway.
hp=$(port)
cat > "$D/haproxy.cfg" <<EOF
global
  nbthread 1
  pidfile $D/haproxy-tls.pid
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend tls
  bind 127.0.0.1:$hp ssl crt $D/haproxy.pem alpn h2,http/1.1 backlog 4096
  default_backend gateway
backend gateway
  server gw 127.0.0.1:$PLAIN_PORT
EOF
haproxy -D -f "$D/haproxy.cfg"
HAPROXY_URL=https://127.0.0.1:$hp/bench/merge/12345

# nginx: TLS as a 1-hop proxy to the first service.
np=$(port)
mkdir -p "$D/nginx"
cat > "$D/nginx.conf" <<EOF
worker_processes 1;
pid $D/nginx-tls.pid;
error_log $D/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream service1 { server 127.0.0.1:${UP1:-18081}; keepalive 64; }
  server {
    listen 127.0.0.1:$np ssl http2 backlog=4096;
    ssl_certificate $D/server.pem;
    ssl_certificate_key $D/server-key.pem;
    location / {
      proxy_pass http://service1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -p "$D/nginx" -c "$D/nginx.conf"
NGINX_URL=https://127.0.0.1:$np/order/12345

cleanup_tls() {
  kill "$GT" 2>/dev/null; wait "$GT" 2>/dev/null
  [ -f "$D/haproxy-tls.pid" ] && kill "$(cat "$D/haproxy-tls.pid")" 2>/dev/null
  [ -f "$D/nginx-tls.pid" ] && kill "$(cat "$D/nginx-tls.pid")" 2>/dev/null
  stop_merge_stack 2>/dev/null
  [ -n "$started_peers" ] && "$PEERS" stop > /dev/null 2>&1
  rm -rf "$D"
}
trap cleanup_tls EXIT

if [ -n "${STACK_CPUS:-}" ]; then
  for pid in "$N" "$W" ${W2:-} "$G" "$GT" "$(cat "$D/haproxy-tls.pid")" $(pgrep -f "nginx.*$D/nginx.conf"); do
    taskset -a -p -c "$STACK_CPUS" "$pid" > /dev/null
  done
  echo "servers on CPU $STACK_CPUS, wrk on CPU ${WRK_CPUS:-any}"
fi
for url in "$TLS_URL" "$HAPROXY_URL" "$NGINX_URL"; do
  for _ in $(seq 100); do curl -sf --cacert "$D/ca.pem" "$url" > /dev/null && break; sleep 0.1; done
  curl -sf --cacert "$D/ca.pem" "$url" > /dev/null || { echo "no 200 at $url" >&2; tail -n 5 "$D"/*.log >&2; exit 1; }
done
# Busgate's TLS listener really speaks h2.
[ "$(curl -s -o /dev/null -w '%{http_version}' --http2 --cacert "$D/ca.pem" "$TLS_URL")" = 2 ] \
  || { echo "no HTTP/2 at $TLS_URL" >&2; exit 1; }
wrk -t2 -c64 -d2s "$TLS_URL" > /dev/null

HAVE_OHA=
command -v oha > /dev/null && HAVE_OHA=1
# oha_rps ARGS… URL: requests/s, or 0 when any answer was not a 200.
oha_rps() {
  local out
  out=$(oha --no-tui --insecure -z "${SECONDS_PER_ROUND}s" --output-format json "$@")
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
codes = d.get("statusCodeDistribution", {})
bad = sum(v for k, v in codes.items() if k != "200")
print(0 if bad or not codes else round(d["summary"]["requestsPerSec"], 1))' <<< "$out"
}

ratio() { python3 -c "print(f'{$1/$2:.3f}' if float($2) else 'n/a')"; }
r_tls=() r_h2=() r_hap=() r_ngx=() r_otls=()
for round in $(seq "$ROUNDS"); do
  plain=$(rps "$PLAIN_URL")
  tls=$(rps "$TLS_URL")
  hap=$(rps "$HAPROXY_URL")
  ngx=$(rps "$NGINX_URL")
  r_tls+=("$(ratio "$tls" "$plain")") r_hap+=("$(ratio "$tls" "$hap")") r_ngx+=("$(ratio "$tls" "$ngx")")
  printf 'round %s  plain %9s  tls %9s  haproxy-tls-in-front %9s  nginx-tls-1-hop %9s req/s\n' \
    "$round" "$plain" "$tls" "$hap" "$ngx"
  if [ -n "$HAVE_OHA" ]; then
    h1=$(oha_rps --http-version 1.1 -c 64 "$TLS_URL")
    h2=$(oha_rps --http2 -c 4 -p 16 "$TLS_URL")
    oplain=$(oha_rps --http-version 1.1 -c 64 "$PLAIN_URL")
    r_h2+=("$(ratio "$h2" "$h1")") r_otls+=("$(ratio "$h1" "$oplain")")
    printf '          h1.1 x64 connections %9s  h2 64 streams on 4 connections %9s  cleartext h1.1 (oha) %9s req/s\n' "$h1" "$h2" "$oplain"
  fi
done
med() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:] if x!='n/a']; print(f'{statistics.median(v):.3f}' if v else 'n/a')" "$@"; }
printf 'median tls/plain: %s (target >= 0.9; rounds: %s)\n' "$(med "${r_tls[@]}")" "${r_tls[*]}"
printf 'median tls/haproxy-tls-in-front: %s (rounds: %s)\n' "$(med "${r_hap[@]}")" "${r_hap[*]}"
printf 'median tls/nginx-tls-1-hop: %s (rounds: %s)\n' "$(med "${r_ngx[@]}")" "${r_ngx[*]}"
if [ -n "$HAVE_OHA" ]; then
  printf 'median h2/h1.1: %s (target >= 1; rounds: %s)\n' "$(med "${r_h2[@]}")" "${r_h2[*]}"
  printf 'median tls/plain with oha (rustls on the client): %s (rounds: %s)\n' "$(med "${r_otls[@]}")" "${r_otls[*]}"
else
  echo "h2/h1.1: not measured, no oha (cargo install oha --locked)"
fi
