#!/usr/bin/env bash
# The peers Busgate is measured against, on loopback: what a user would otherwise deploy.
#
#   tests/perf/peers/peers.sh start | stop | status
#
# Ports (each can be set through the environment):
#   UP1=18081 UP2=18082  two fake internal services: nginx returning a fixed order JSON at
#                        /order/{id} (point Busgate's adapters here: every contender calls the
#                        same services)
#   PROXY=18090          nginx 1-hop reverse proxy to UP1 (GET /order/{id})
#   HAPROXY=18092        HAProxy 1-hop reverse proxy to UP1 (GET /order/{id})
#   MERGE=18091          nginx + Lua merge of UP1 and UP2 (GET /api/orders/{id} ->
#                        {"order_id","service1":{..},"service2":{..}})
# PEERS_DIR (default /tmp/busgate-peers) holds the filled-in configurations, pid files and logs.
#
# The configurations are the templates beside this script. Needs nginx with the Lua module,
# HAProxy, and curl; run as root, the script installs what is missing (Debian: nginx-light,
# libnginx-mod-http-lua, haproxy, wrk for the load, curl).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
UP1=${UP1:-18081} UP2=${UP2:-18082} PROXY=${PROXY:-18090} MERGE=${MERGE:-18091} HAPROXY=${HAPROXY:-18092}
DIR=${PEERS_DIR:-/tmp/busgate-peers}
MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}

missing() {
  local packages=()
  command -v nginx > /dev/null || packages+=(nginx-light)
  [ -f "$MODULES/ngx_http_lua_module.so" ] || packages+=(libnginx-mod-http-lua)
  command -v haproxy > /dev/null || packages+=(haproxy)
  command -v wrk > /dev/null || packages+=(wrk)
  command -v curl > /dev/null || packages+=(curl)
  echo "${packages[@]}"
}

install_missing() {
  local packages
  packages=$(missing)
  [ -z "$packages" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
    echo "peers.sh: missing $packages; install them (Debian packages) or run this script as root" >&2
    exit 1
  fi
  echo "peers.sh: installing $packages" >&2
  # shellcheck disable=SC2086 # one word per package
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages) > /dev/null
}

# fill TEMPLATE OUTPUT: the template with its @NAME@ placeholders replaced.
fill() {
  sed -e "s|@DIR@|$DIR|g" -e "s|@MODULES@|$MODULES|g" \
      -e "s|@UP1@|$UP1|g" -e "s|@UP2@|$UP2|g" -e "s|@PROXY@|$PROXY|g" \
      -e "s|@MERGE@|$MERGE|g" -e "s|@HAPROXY@|$HAPROXY|g" "$HERE/$1" > "$DIR/$2"
}

# stop_one PIDFILE: stops the process it names, waiting (bounded: 5 s) until it is gone.
stop_one() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && kill "$pid" 2> /dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}

stop_all() {
  stop_one "$DIR/haproxy.pid"
  stop_one "$DIR/gateways.pid"
  stop_one "$DIR/services.pid"
}

# up URL: whether URL answers 200.
up() { curl -sf -o /dev/null --max-time 2 "$1"; }

urls() {
  echo "service1 http://127.0.0.1:$UP1/order/7"
  echo "service2 http://127.0.0.1:$UP2/order/7"
  echo "nginx-1-hop http://127.0.0.1:$PROXY/order/7"
  echo "haproxy-1-hop http://127.0.0.1:$HAPROXY/order/7"
  echo "nginx-lua-merge http://127.0.0.1:$MERGE/api/orders/7"
}

start() {
  install_missing
  mkdir -p "$DIR/logs" "$DIR/tmp"
  stop_all
  fill services.nginx.conf services.nginx.conf
  fill gateways.nginx.conf gateways.nginx.conf
  fill haproxy.cfg haproxy.cfg
  nginx -q -c "$DIR/services.nginx.conf" -p "$DIR" -e "$DIR/logs/services.err"
  nginx -q -c "$DIR/gateways.nginx.conf" -p "$DIR" -e "$DIR/logs/gateways.err"
  haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid" > "$DIR/logs/haproxy.err" 2>&1 \
    || { cat "$DIR/logs/haproxy.err" >&2; stop_all; exit 1; }
  # Every peer answers (bounded: 5 s), or the start failed.
  local name url
  while read -r name url; do
    for _ in $(seq 50); do up "$url" && break; sleep 0.1; done
    if ! up "$url"; then
      echo "peers.sh: $name ($url) does not answer; logs in $DIR/logs" >&2
      stop_all
      exit 1
    fi
  done < <(urls)
  echo "services :$UP1 :$UP2  nginx 1-hop :$PROXY  HAProxy 1-hop :$HAPROXY  nginx + Lua merge :$MERGE  (logs in $DIR/logs)"
}

status() {
  local name url down=0
  while read -r name url; do
    if up "$url"; then echo "$name up ($url)"; else echo "$name down ($url)"; down=1; fi
  done < <(urls)
  return $down
}

case "${1:-}" in
  start) start ;;
  stop) stop_all; echo "peers stopped" ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
