#!/usr/bin/env bash
# The container test (issue 17): the images, the compose stack and the Kubernetes manifests of
# deploy/, built and run here with Podman, offline.
#
#   tests/container/run.sh [BIN_DIR]      BIN_DIR: busgate and busgate-worker (default target/release)
#
# 1. installs what is missing (podman, podman-compose, runc, haproxy, promtool; kubernetes-validate
#    from PyPI; @grafana/schema and typescript from npm) and /etc/containers/containers.conf;
# 2. checks the configuration files with their own tools (promtool, haproxy -c, nats-server -t,
#    busgate check-config, kubernetes-validate --strict offline, the dashboard against Grafana's
#    schema);
# 3. builds the images with deploy/build-images.sh and checks them (non-root, no shell, labels);
# 4. starts deploy/compose.yaml; a merged answer through the load balancer; no nats-proxy (the
#    gateways and adapters reach the NATS nodes themselves); the NATS users of
#    authorization.conf in force (a worker's credentials cannot publish on the gateways'
#    subjects); HTTPS on :8443 (the gateways' certificate, from deploy/make-cert.sh); the
#    gateways' health checks (`busgate health`) turning healthy;
# 5. an asynchronous request submitted to one gateway and polled on the other;
# 6. kills the NATS node the gateways use, with requests running; answers must go on;
# 7. the admin listener: reachable on the host's loopback only;
# 8. bad settings: exit 64 with the reason in the log; missing secret files are named;
# 9. `podman kube play` of deploy/k8s/busgate.yaml against that NATS: a merged answer;
# 10. tears everything down and checks that no container, pod, network or volume is left.
#
# Prints image sizes and timings. Exits non-zero on any failure. Every wait polls with a deadline.
# Runs as root (it installs packages and runs rootful Podman); CI: `tests/container/run.sh target/debug`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/container
BIN_DIR=$(cd "${1:-$ROOT/target/release}" && pwd)
TOOLS=${BUSGATE_HOME:-$HOME/.local/share/busgate}/tools
KV_VERSION=1.37.0 # kubernetes-validate, with the Kubernetes schemas in the package
P=bgct$$          # the compose project: every container, network and volume carries its name
WORK=$(mktemp -d)
chmod 700 "$WORK"
START=$(date +%s%N)
PASSED=0
KUBE_SECRET=""

# ---------------------------------------------------------------------------------------------
# Output and timing

now_ms() { echo $(($(date +%s%N) / 1000000)); }
elapsed() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f s", (b - a) / 1000 }'; }
say() { printf '\n== %s\n' "$*"; }
ok() {
  printf '  ok   %s\n' "$*"
  PASSED=$((PASSED + 1))
}
fail() { # the first failure ends the test (in sections 7 to 9: its section): what follows would depend on what failed
  printf '  FAIL %s\n' "$*" >&2
  exit 1
}
# Secrets of this run never reach the output: the admin token is replaced wherever a log is shown.
redact() { sed -e "s/${ADMIN_TOKEN:-@@none@@}/<admin-token>/g"; }
show_log() { # FILE [LINES]
  [ -f "$1" ] && tail -n "${2:-40}" "$1" | redact | sed 's/^/      /' >&2 || true
}

# Polls CMD until it succeeds or SECONDS pass; the command's last output is in $WORK/poll.out.
# Every wait of this test is one of these: no bare sleeps as synchronisation.
wait_for() { # SECONDS DESCRIPTION CMD...
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(now_ms) + seconds * 1000))
  while :; do
    if "$@" >"$WORK/poll.out" 2>&1; then return 0; fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      echo "  timed out after ${seconds}s: $what; last output:" >&2
      show_log "$WORK/poll.out" 20
      return 1
    fi
    sleep 0.2 # the pause between two polls, not a synchronisation
  done
}

# ---------------------------------------------------------------------------------------------
# The one way this test makes a public API request. BASE is where it goes: a URL reached from
# the host (the load balancer), or probe:URL, sent from the probe container on the compose
# network (to one gateway instance). Public requests name a client (issue 14): once the test
# has made one, its key goes with every request as X-API-Key, from a file (-H @file, or on
# the probe's standard input), never in an argument.
public() { # BASE PATH [curl args...]; prints the body, then a line with the HTTP status
  local base=$1 path=$2
  shift 2
  local run=() key=() input=/dev/null
  if [[ -f $WORK/client.header ]]; then
    key=(-H @"$WORK/client.header")
    input=$WORK/client.header
  fi
  if [[ $base == probe:* ]]; then
    # The probe trusts the stack's CA (/ca.crt): the gateways serve HTTPS on 8443.
    run=(podman exec -i "$PROBE_EDGE")
    base=${base#probe:}
    [[ ${#key[@]} -gt 0 ]] && key=(-H @-)
    key+=(--cacert /ca.crt)
  fi
  "${run[@]}" curl -sS --max-time 10 -w '\n%{http_code}\n' "${key[@]}" "$@" "$base$path" <"$input"
}
# The merged order request of the README, checked: 200, complete, both services' data.
merged_ok() { # BASE ORDER_ID
  public "$1" /api/order -H 'content-type: application/json' -d "{\"order_id\":\"$2\"}" >"$WORK/merged.out" &&
    json_check "$WORK/merged.out" "status == 200 and b['complete'] is True and b['order_id'] == '$2'
      and b['data']['service1']['order_id'] == '$2' and b['data']['service2']['order_id'] == '$2'"
}
# Evaluates a Python expression over a response saved by `public` (b: the JSON body, or None;
# status: the HTTP status); on a mismatch prints the response, which wait_for shows on timeout.
json_check() { # FILE EXPR
  python3 - "$1" "$2" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().rstrip("\n").split("\n")
status = int(lines[-1])
try:
    b = json.loads("\n".join(lines[:-1]))
except ValueError:
    b = None
if eval("(" + sys.argv[2] + ")", {"b": b, "status": status}):
    sys.exit(0)
print("\n".join(lines)[:2000])  # what did not match, for wait_for's report
sys.exit(1)
EOF
}

# ---------------------------------------------------------------------------------------------
# Clean-up: everything this run created carries the project's name or label.

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ]; then
    echo >&2
    echo "container test FAILED: logs of the stack (admin token redacted)" >&2
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$P" --format '{{.Names}}' 2>/dev/null); do
      echo "  --- $c" >&2
      podman logs --tail 15 "$c" 2>&1 | grep -v 'level=error msg="unable to get systemd' | redact | sed 's/^/      /' >&2
    done
    for c in $(podman ps -a --filter "network=$P-kube" --format '{{.Names}}' 2>/dev/null | grep -v infra); do
      echo "  --- $c" >&2
      podman logs --tail 10 "$c" 2>&1 | grep -v 'level=error msg="unable to get systemd' | redact | sed 's/^/      /' >&2
    done
    show_log "$WORK/compose-up.log" 15
  fi
  if [ -n "${LOAD_PID:-}" ]; then kill "$LOAD_PID" 2>/dev/null; fi
  say "teardown"
  local t0
  t0=$(now_ms)
  if [ -f "$WORK/kube.yaml" ]; then podman kube down "$WORK/kube.yaml" >/dev/null 2>&1; fi
  podman pod ls -q --filter "network=$P-kube" 2>/dev/null | xargs -r podman pod rm -f -t 3 >/dev/null 2>&1
  for label in "io.podman.compose.project=$P" "io.busgate.test=$P"; do
    podman ps -aq --filter "label=$label" 2>/dev/null | xargs -r podman rm -f -t 3 >/dev/null 2>&1
  done
  for label in "io.podman.compose.project=$P" "io.busgate.test=$P"; do
    podman network ls -q --filter "label=$label" 2>/dev/null | xargs -r podman network rm -f >/dev/null 2>&1
  done
  podman volume ls -q --filter "label=io.podman.compose.project=$P" 2>/dev/null | xargs -r podman volume rm -f >/dev/null 2>&1
  if [ -f "$WORK/kube.secret" ]; then KUBE_SECRET=$(cat "$WORK/kube.secret"); fi
  if [ -n "$KUBE_SECRET" ]; then
    podman secret rm "$KUBE_SECRET" >/dev/null 2>&1
    podman volume rm -f busgate >/dev/null 2>&1 # the ConfigMap's, made by kube play
  fi
  local left
  left=$(
    podman ps -a --format '{{.Names}}' --filter "label=io.podman.compose.project=$P"
    podman ps -a --format '{{.Names}}' --filter "label=io.busgate.test=$P"
    podman pod ls --format '{{.Name}}' --filter "network=$P-kube"
    if [ -n "$KUBE_SECRET" ] && podman volume inspect busgate >/dev/null 2>&1; then echo "volume busgate"; fi
    podman network ls --format '{{.Name}}' --filter "label=io.podman.compose.project=$P"
    podman network ls --format '{{.Name}}' --filter "label=io.busgate.test=$P"
    podman volume ls --format '{{.Name}}' --filter "label=io.podman.compose.project=$P"
  )
  if [ -n "$left" ]; then
    echo "  FAIL left behind: $left" >&2
    rc=1
  else
    echo "  ok   no container, pod, network or volume of the test left ($(elapsed "$t0"))"
  fi
  rm -rf "$WORK"
  echo
  echo "tests/container/run.sh: $(elapsed $((START / 1000000))) in all"
  local failed=${FAILED:-0}
  if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
  echo "container: $PASSED passed, $failed failed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
say "1. set-up"
t0=$(now_ms)
[ "$(id -u)" = 0 ] || { echo "tests/container/run.sh runs as root (packages, rootful Podman)" >&2; exit 1; }
for b in busgate busgate-worker; do
  [ -x "$BIN_DIR/$b" ] || { echo "no $BIN_DIR/$b: build it first (cargo build --bins)" >&2; exit 1; }
done
# Podman with what Debian recommends beside it (netavark and aardvark-dns: bridge networks with
# DNS); the tools, without (prometheus would bring its node exporter).
podman_pkgs=() tool_pkgs=()
command -v podman >/dev/null || podman_pkgs+=(podman)
command -v podman-compose >/dev/null || podman_pkgs+=(podman-compose)
command -v runc >/dev/null || podman_pkgs+=(runc)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || tool_pkgs+=(haproxy)
command -v promtool >/dev/null || tool_pkgs+=(prometheus)
command -v curl >/dev/null || tool_pkgs+=(curl)
command -v objcopy >/dev/null || tool_pkgs+=(binutils)
if [ $((${#podman_pkgs[@]} + ${#tool_pkgs[@]})) -gt 0 ]; then
  echo "  installing ${podman_pkgs[*]} ${tool_pkgs[*]} (Debian)"
  {
    apt-get update -qq &&
      if [ ${#podman_pkgs[@]} -gt 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${podman_pkgs[@]}"; fi &&
      if [ ${#tool_pkgs[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tool_pkgs[@]}"
      fi
  } >"$WORK/apt.log" 2>&1 || { show_log "$WORK/apt.log"; fail "apt-get install ${podman_pkgs[*]} ${tool_pkgs[*]}"; }
fi
PATH=$PATH:/usr/sbin
# Podman on this kind of machine: runc (crun fails: "cgroups in hybrid mode not supported"), and
# ulimits the runtime can set (it fails to set RLIMIT_NOFILE / RLIMIT_NPROC otherwise).
CONF=/etc/containers/containers.conf
if [ ! -f "$CONF" ]; then
  mkdir -p /etc/containers
  printf '%s\n' '[containers]' 'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]' \
    '[engine]' 'runtime = "runc"' >"$CONF"
  echo "  wrote $CONF (runc, ulimits)"
elif ! grep -q '^runtime *= *"runc"' "$CONF"; then
  echo "  note: $CONF exists and does not choose runc; left as it is"
fi
# kubernetes-validate: the Kubernetes JSON schemas come inside the package (checked offline below).
KV=$TOOLS/kubernetes-validate-$KV_VERSION
if [ ! -f "$KV/.installed" ]; then
  rm -rf "$KV"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$KV" "kubernetes-validate==$KV_VERSION" >"$WORK/pip.log" 2>&1 ||
    { show_log "$WORK/pip.log"; fail "pip install kubernetes-validate"; }
  touch "$KV/.installed"
fi
# Grafana's dashboard schema and the TypeScript compiler that applies it (tests/container/package.json).
if [ ! -d "$HERE/node_modules/@grafana/schema" ] || [ ! -d "$HERE/node_modules/typescript" ]; then
  npm ci --prefix "$HERE" --no-audit --no-fund >"$WORK/npm.log" 2>&1 || { show_log "$WORK/npm.log"; fail "npm ci"; }
fi
NATS_SERVER=$("$ROOT/deploy/install-nats.sh" 2>/dev/null)
echo "  $(podman --version), podman-compose $(dpkg-query -W -f '${Version}' podman-compose 2>/dev/null),"
echo "  $(haproxy -v | head -1 | cut -d' ' -f1-3), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3), $("$NATS_SERVER" --version)"
ok "set-up ($(elapsed "$t0"))"

# ---------------------------------------------------------------------------------------------
say "2. configuration files, checked by their own tools"
t0=$(now_ms)
# The CA file it names is the stack's (mounted by compose.monitoring.yaml): one made here.
TLS_DIR=$WORK/tls-check "$ROOT/deploy/make-cert.sh" 2>>"$WORK/podman.log" || fail "deploy/make-cert.sh"
sed "s|/etc/prometheus/tls/ca.crt|$WORK/tls-check/ca.crt|" "$ROOT/deploy/prometheus/prometheus.yml" >"$WORK/prometheus.yml"
promtool check config "$WORK/prometheus.yml" >"$WORK/promtool.log" 2>&1 ||
  { show_log "$WORK/promtool.log"; fail "promtool check config deploy/prometheus/prometheus.yml"; }
ok "promtool check config deploy/prometheus/prometheus.yml"
node "$HERE/check-dashboard.mjs" "$ROOT"/deploy/grafana/dashboards/*.json >"$WORK/dashboard.log" 2>&1 ||
  { show_log "$WORK/dashboard.log"; fail "dashboard against @grafana/schema"; }
ok "$(sed 's|.*/deploy/|deploy/|' "$WORK/dashboard.log" | head -1)"
# The stack's secrets for this run: the NATS users' passwords (hex: they stand in URLs).
for var in BUSGATE_NATS_GATEWAY_PASSWORD BUSGATE_NATS_SERVICE1_PASSWORD BUSGATE_NATS_SERVICE2_PASSWORD \
  BUSGATE_NATS_ADMIN_PASSWORD; do
  export "$var=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
done
# A certificate as deploy/make-cert.sh makes it, for haproxy -c (the CA path it names).
TLS_DIR=$WORK/tls-check "$ROOT/deploy/make-cert.sh" 2>>"$WORK/podman.log" || fail "deploy/make-cert.sh"
openssl verify -CAfile "$WORK/tls-check/ca.crt" "$WORK/tls-check/gateway.crt" >/dev/null ||
  fail "deploy/make-cert.sh: the chain does not verify"
ok "deploy/make-cert.sh: a CA and the gateways' chain that verifies against it"
sed "s|/usr/local/etc/haproxy/tls/ca.crt|$WORK/tls-check/ca.crt|g" "$ROOT/deploy/haproxy/haproxy.cfg" >"$WORK/haproxy.cfg"
# Outside the stack the gateways' names do not resolve: haproxy warns, and must find no error.
for dns in runtime startup; do
  if [ "$dns" = startup ]; then export BUSGATE_LB_DNS=startup; else unset BUSGATE_LB_DNS; fi
  haproxy -c -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 ||
    { show_log "$WORK/haproxy.log"; fail "haproxy -c deploy/haproxy/haproxy.cfg (BUSGATE_LB_DNS: $dns)"; }
done
unset BUSGATE_LB_DNS
ok "haproxy -c deploy/haproxy/haproxy.cfg, names resolved at run time or at start"
[ ! -e "$ROOT/deploy/haproxy/nats.cfg" ] && ! grep -q 'nats-proxy' "$ROOT/deploy/compose.yaml" ||
  fail "deploy/ still has a nats-proxy"
ok "no nats-proxy in deploy/: the gateways and adapters are given every NATS node"
NATS_NAME=nats-1 "$NATS_SERVER" -t -c "$ROOT/deploy/nats/cluster.conf" >"$WORK/nats-t.log" 2>&1 ||
  { show_log "$WORK/nats-t.log"; fail "nats-server -t deploy/nats/cluster.conf"; }
ok "nats-server -t -c deploy/nats/cluster.conf"
"$BIN_DIR/busgate" check-config --config "$ROOT/deploy/busgate.toml" >/dev/null 2>"$WORK/check.log" ||
  { show_log "$WORK/check.log"; fail "busgate check-config deploy/busgate.toml"; }
ok "busgate check-config --config deploy/busgate.toml"
# With no network at all (a network namespace of its own): the schemas are the package's.
for v in 1.30.0 1.37.0; do
  unshare -n env PYTHONPATH="$KV" python3 -m kubernetes_validate --strict --quiet -k "$v" \
    "$ROOT"/deploy/k8s/*.yaml >"$WORK/kv.log" 2>&1 ||
    { show_log "$WORK/kv.log"; fail "kubernetes-validate --strict -k $v deploy/k8s/*.yaml"; }
done
ok "kubernetes-validate $KV_VERSION --strict, Kubernetes 1.30 and 1.37, offline: deploy/k8s/*.yaml"
# The stack runs from a copy of deploy/ without its .env (podman-compose lets .env win over the
# environment, so a developer's own would change this test): the same files otherwise.
cp -r "$ROOT/deploy" "$WORK/deploy"
rm -rf "$WORK/deploy/.env" "$WORK/deploy/tls"
TLS_DIR=$WORK/deploy/tls "$WORK/deploy/make-cert.sh" 2>>"$WORK/podman.log" || fail "deploy/make-cert.sh for the stack"
# Compose: the files parse and merge, the variables resolve, and a missing admin token is named.
# (podman-compose 1.0.3 has no `config`; `ps` reads the files the same way and only lists.)
(cd "$WORK/deploy" && BUSGATE_ADMIN_TOKEN=x GRAFANA_ADMIN_PASSWORD=x podman-compose -p "$P" -f compose.yaml \
  -f compose.monitoring.yaml ps) >"$WORK/config.log" 2>&1 ||
  { show_log "$WORK/config.log"; fail "podman-compose: compose.yaml with compose.monitoring.yaml"; }
if (cd "$WORK/deploy" && env -u BUSGATE_ADMIN_TOKEN podman-compose -p "$P" -f compose.yaml ps) >"$WORK/config.log" 2>&1 ||
  ! grep -q 'set BUSGATE_ADMIN_TOKEN' "$WORK/config.log"; then
  show_log "$WORK/config.log"
  fail "compose without BUSGATE_ADMIN_TOKEN must refuse to start and say so"
fi
ok "compose: files merge; without BUSGATE_ADMIN_TOKEN it refuses, naming the variable"
ok "checks ($(elapsed "$t0"))"

# ---------------------------------------------------------------------------------------------
say "3. images (deploy/build-images.sh $BIN_DIR)"
t0=$(now_ms)
ENV_FILE='' "$ROOT/deploy/build-images.sh" "$BIN_DIR" >"$WORK/images.env" 2>"$WORK/build.log" ||
  { show_log "$WORK/build.log"; fail "deploy/build-images.sh"; }
while IFS='=' read -r name image; do
  [ -n "$name" ] && export "$name=$image"
done <"$WORK/images.env"
BUILD_TIME=$(elapsed "$t0")
size_mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }
SIZES="busgate $(size_mb "$BUSGATE_IMAGE") (base $(size_mb localhost/busgate-runtime:latest)), nats $(size_mb "$NATS_IMAGE"), haproxy $(size_mb "$LB_IMAGE")"
ok "built in $BUILD_TIME: $SIZES"
inspect() { podman image inspect --format "$2" "$1"; }
for image in "$BUSGATE_IMAGE" "$NATS_IMAGE" "$LB_IMAGE"; do
  [ "$(inspect "$image" '{{.Config.User}}')" = 65532:65532 ] || fail "$image does not run as 65532:65532"
  [ -n "$(inspect "$image" '{{index .Config.Labels "org.opencontainers.image.title"}}')" ] || fail "$image has no OCI title"
  [ -n "$(inspect "$image" '{{.Config.StopSignal}}')" ] || fail "$image has no STOPSIGNAL"
  # No shell: nothing to exec into but the program itself.
  if podman run --rm --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then fail "$image has a shell"; fi
done
ok "every image: user 65532, OCI labels, STOPSIGNAL, no /bin/sh"
for label in version revision created source licenses; do
  [ -n "$(inspect "$BUSGATE_IMAGE" "{{index .Config.Labels \"org.opencontainers.image.$label\"}}")" ] ||
    fail "busgate image: no org.opencontainers.image.$label"
done
[ "$(inspect "$BUSGATE_IMAGE" '{{index .Config.Healthcheck.Test 1}}')" = /usr/local/bin/busgate ] &&
  [ "$(inspect "$BUSGATE_IMAGE" '{{index .Config.Healthcheck.Test 2}}')" = health ] ||
  fail "busgate image: no HEALTHCHECK running 'busgate health'"
v_gateway=$(podman run --rm "$BUSGATE_IMAGE" --version 2>/dev/null)
v_worker=$(podman run --rm --entrypoint /usr/local/bin/busgate-worker "$BUSGATE_IMAGE" --version 2>/dev/null)
[[ $v_gateway == "busgate "* && $v_worker == "busgate-worker "* ]] ||
  fail "the image's binaries answer '$v_gateway' and '$v_worker'"
ok "busgate image: $v_gateway and $v_worker, OCI labels (version, revision, created, source, licenses), HEALTHCHECK"

# The test's own probe (never shipped): curl and sleep with their libraries, to send requests
# from inside the stack's networks.
PROBE_IMAGE=localhost/busgate-test-probe:latest
mkdir -p "$WORK/probe/rootfs/etc"
for b in curl sleep; do
  src=$(readlink -f "$(command -v "$b")")
  install -D "$src" "$WORK/probe/rootfs/usr/bin/$b"
  for lib in $(ldd "$src" | grep -oE '/[^ ]+'); do
    mkdir -p "$WORK/probe/rootfs$(dirname "$lib")"
    cp -L "$lib" "$WORK/probe/rootfs$lib"
  done
done
printf 'hosts: files dns\n' >"$WORK/probe/rootfs/etc/nsswitch.conf"
cp "$WORK/deploy/tls/ca.crt" "$WORK/probe/rootfs/ca.crt"
printf '%s\n' 'FROM scratch' 'COPY rootfs/ /' 'USER 65532:65532' 'ENTRYPOINT ["/usr/bin/sleep", "infinity"]' \
  >"$WORK/probe/Dockerfile"
podman build -q --layers=false --label io.busgate.build-images=1 -t "$PROBE_IMAGE" "$WORK/probe" >/dev/null 2>"$WORK/probe.log" ||
  { show_log "$WORK/probe.log"; fail "the probe image"; }
podman image prune -f --filter label=io.busgate.build-images=1 >/dev/null 2>&1 # its previous build
probe() { # NAME NETWORK: a long-lived probe container on one of the stack's networks
  podman run -d --name "$1" --label "io.busgate.test=$P" --network "$2" "$PROBE_IMAGE" >/dev/null 2>>"$WORK/podman.log"
}
# One request from a throw-away probe container: prints the body, then the HTTP status.
probe_once() { # NETWORK URL [curl args...]
  local net=$1
  shift
  podman run --rm --label "io.busgate.test=$P" --network "$net" --entrypoint /usr/bin/curl "$PROBE_IMAGE" \
    -sS --max-time 5 -w '\n%{http_code}\n' "$@" 2>>"$WORK/podman.log"
}

# ---------------------------------------------------------------------------------------------
say "4. the compose stack: a merged answer through the load balancer"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ADMIN_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
BUSGATE_HTTP_PORT=$(free_port)
BUSGATE_ADMIN_PORT=$(free_port)
BUSGATE_HTTPS_PORT=$(free_port)
export BUSGATE_ADMIN_TOKEN=$ADMIN_TOKEN BUSGATE_HTTP_PORT BUSGATE_ADMIN_PORT BUSGATE_HTTPS_PORT
export BUSGATE_CALLBACKS_SECRET=""
# The proxies resolve names once, at start: HAProxy's own resolver would also query the DNS
# servers outside this machine that Podman lists in the containers' resolv.conf, every second.
export BUSGATE_LB_DNS=startup
LB=http://127.0.0.1:$BUSGATE_HTTP_PORT
ADMIN=http://127.0.0.1:$BUSGATE_ADMIN_PORT
# The admin token goes to curl in a file (-H @file), never in its arguments.
printf 'Authorization: Bearer %s\n' "$ADMIN_TOKEN" >"$WORK/admin.header"
admin() { # PATH [curl args...]; prints the body, then the HTTP status
  local path=$1
  shift
  curl -sS --max-time 10 -w '\n%{http_code}\n' "$@" "$ADMIN$path"
}
# A client for this test's public requests, made as an operator would (README "Docker"): its
# key is shown once, in the answer, and kept in a header file.
make_client() {
  admin /admin/v1/clients -H @"$WORK/admin.header" -H 'content-type: application/json' \
    -d '{"name":"container-test","spec":{"description":"tests/container/run.sh"}}' >"$WORK/client.out" 2>/dev/null &&
    json_check "$WORK/client.out" "status == 201" &&
    python3 -c 'import json,sys; lines = open(sys.argv[1]).read().rstrip("\n").split("\n"); print("X-API-Key: " + json.loads("\n".join(lines[:-1]))["key"]["secret"])' \
      "$WORK/client.out" >"$WORK/client.header"
}
t_up=$(now_ms)
# podman-compose prints each podman command it runs, environment included: kept in $WORK only.
(cd "$WORK/deploy" && podman-compose -p "$P" -f compose.yaml up -d) >"$WORK/compose-up.log" 2>&1 ||
  fail "podman-compose up (project $P)"
wait_for 180 "a client made through the admin API" make_client || fail "cannot make a client through the admin API"
wait_for 180 "a merged answer through the load balancer" merged_ok "$LB" A1 || fail "no merged answer through the load balancer"
UP_TO_ANSWER=$(elapsed "$t_up")
curl -sS --max-time 10 -w '\n%{http_code}\n' "$LB/api/orders/A1" >"$WORK/nokey.out" &&
  json_check "$WORK/nokey.out" "status == 401 and b['type'] == 'urn:busgate:problem:unauthorized'" ||
  fail "a public request without a client key must be refused (401)"
ok "merged answer (service1 + service2, complete) on :$BUSGATE_HTTP_PORT, $UP_TO_ANSWER after 'up' (podman-compose starts the 10 containers one by one)"
ctr() { podman ps -a --filter "label=io.podman.compose.project=$P" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}'; }
running=$(podman ps --filter "label=io.podman.compose.project=$P" --filter status=running --format '{{.Names}}' | wc -l)
[ "$running" = 10 ] || { podman ps -a --filter "label=io.podman.compose.project=$P" >&2; fail "$running of 10 containers running"; }
[ -z "$(ctr nats-proxy)" ] || fail "a nats-proxy container runs"
[ "$(podman top "$(ctr gateway-a)" huser | tail -n +2 | sort -u)" = 65532 ] || fail "gateway-a's process is not user 65532"
ok "10 containers running, no nats-proxy; the gateway runs as 65532"
# Health: `busgate health` (the image's HEALTHCHECK, told the HTTPS URL and CA by compose) turns
# both gateways healthy. Podman runs a check on its timer where systemd is there; `healthcheck
# run` runs it now and records the outcome either way.
health_status() { podman inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Healthcheck.Status}}{{end}}' "$1" 2>/dev/null; }
healthy() { podman healthcheck run "$(ctr "$1")" >/dev/null 2>&1 && [ "$(health_status "$(ctr "$1")")" = healthy ]; }
for g in gateway-a gateway-b; do
  wait_for 60 "$g healthy" healthy "$g" || fail "$g: its health check (busgate health) does not turn healthy"
done
ok "gateway-a and gateway-b: health checks (busgate health on https://127.0.0.1:8443/health/ready) healthy"
# HTTPS on :8443: the gateways' certificate, trusted through the stack's CA; HTTP/2 by ALPN.
LB_TLS=https://localhost:$BUSGATE_HTTPS_PORT
https_ok() {
  curl -sS --max-time 10 --cacert "$WORK/deploy/tls/ca.crt" -w '\n%{http_code} %{http_version}\n' \
    "$LB_TLS/health/ready" >"$WORK/https.out" && tail -1 "$WORK/https.out" | grep -q '^200 2$'
}
wait_for 60 "HTTPS (HTTP/2) on :$BUSGATE_HTTPS_PORT" https_ok || fail "no HTTPS with HTTP/2 on :$BUSGATE_HTTPS_PORT"
curl -sS --max-time 10 --cacert "$WORK/deploy/tls/ca.crt" -w '\n%{http_code}\n' -H @"$WORK/client.header" \
  -H 'content-type: application/json' -d '{"order_id":"T1"}' "$LB_TLS/api/order" >"$WORK/https-merged.out" &&
  json_check "$WORK/https-merged.out" "status == 200 and b['complete'] is True" ||
  fail "no merged answer over HTTPS on :$BUSGATE_HTTPS_PORT"
if curl -s -o /dev/null --max-time 5 "$LB_TLS/health/ready"; then fail "HTTPS answered a client that does not trust the CA"; fi
ok "HTTPS on :$BUSGATE_HTTPS_PORT: HTTP/2, a merged answer, the certificate verified (and refused without the CA)"
# NATS accounts in force: the raw protocol (curl telnet://, on the bus network), the password on
# standard input. A worker's user may not publish on the gateways' subjects; the gateway's may.
nats_as() { # USER PASSWORD SUBJECT...: CONNECT, a PUB to each subject, PING; prints what the server said
  local user=$1 pass=$2 cmd
  shift 2
  cmd=$(printf 'CONNECT {"user":"%s","pass":"%s","verbose":false,"pedantic":false}\r\n' "$user" "$pass")
  for subject in "$@"; do cmd+=$(printf 'PUB %s 2\r\nhi\r\n' "$subject"); done
  cmd+=$(printf 'PING\r\n')
  printf '%s' "$cmd" | podman run --rm -i --label "io.busgate.test=$P" --network "${P}_bus" \
    --entrypoint /usr/bin/curl "$PROBE_IMAGE" -s --max-time 3 telnet://nats-1:4222 2>>"$WORK/podman.log" || true
}
nats_as service1 "$BUSGATE_NATS_SERVICE1_PASSWORD" busgate.svc.service2 busgate.jobs.request busgate.fleet.forged \
  '$KV.busgate-config.routes.evil' >"$WORK/nats-s1.out"
for subject in busgate.svc.service2 busgate.jobs.request busgate.fleet.forged '$KV.busgate-config.routes.evil'; do
  grep -qF "Permissions Violation for Publish to \"$subject\"" "$WORK/nats-s1.out" ||
    { show_log "$WORK/nats-s1.out"; fail "service1's NATS user may publish on $subject"; }
done
nats_as busgate-gateway "$BUSGATE_NATS_GATEWAY_PASSWORD" busgate.fleet.probe >"$WORK/nats-gw.out"
grep -q '^PONG' "$WORK/nats-gw.out" && ! grep -q 'Violation' "$WORK/nats-gw.out" ||
  { show_log "$WORK/nats-gw.out"; fail "the gateway's NATS user is refused (control)"; }
nats_as service1 wrong-password busgate.svc.service1 >"$WORK/nats-bad.out"
grep -q 'Authorization Violation' "$WORK/nats-bad.out" || { show_log "$WORK/nats-bad.out"; fail "NATS took a wrong password"; }
ok "NATS users in force: service1 may not publish on busgate.svc.service2, busgate.jobs.request, busgate.fleet.*, the config bucket; the gateway user may; a wrong password is refused"
public "$LB" /metrics >"$WORK/metrics.out" && json_check "$WORK/metrics.out" "status == 404" ||
  fail "the load balancer must not serve /metrics"

# ---------------------------------------------------------------------------------------------
say "5. an asynchronous request: submitted to gateway-a, polled on gateway-b"
PROBE_EDGE=$P-probe-edge
probe "$PROBE_EDGE" "${P}_edge" || fail "probe container on ${P}_edge"
ready() { public "probe:https://$1:8443" /health/ready >"$WORK/ready.out" && json_check "$WORK/ready.out" "status == 200"; }
wait_for 60 "gateway-a and gateway-b ready" eval 'ready gateway-a && ready gateway-b' || fail "gateways not ready"
for g in gateway-a gateway-b; do
  public "probe:https://$g:8443" /metrics >"$WORK/metrics.out" &&
    grep -q '^busgate_gathers_in_flight' "$WORK/metrics.out" || fail "$g:8443/metrics (what Prometheus scrapes)"
  grep -q '^busgate_gateway_instances 2' "$WORK/metrics.out" || fail "$g does not count 2 gateway instances"
done
ok "/metrics: served by each gateway inside the stack (deploy/prometheus/prometheus.yml), 404 on the public port"
t0=$(now_ms)
public probe:https://gateway-a:8443 /api/orders/A2 -H 'Prefer: respond-async' >"$WORK/submit.out" || fail "async submit"
json_check "$WORK/submit.out" "status == 202 and b['status'] == 'pending'" || { show_log "$WORK/submit.out"; fail "async submit: no 202"; }
REQ=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().rsplit("\n", 2)[0])["request_id"])' "$WORK/submit.out")
async_done() { # BASE REQUEST_ID ORDER_ID
  public "$1" "/api/requests/$2" >"$WORK/poll-async.out" &&
    json_check "$WORK/poll-async.out" "status == 200 and b['status'] == 'completed' and b['http_status'] == 200
      and b['result']['complete'] is True and b['result']['data']['service2']['order_id'] == '$3'"
}
wait_for 30 "request $REQ completed, seen on gateway-b" async_done probe:https://gateway-b:8443 "$REQ" A2 ||
  fail "the asynchronous request was not completed on gateway-b"
ASYNC_TIME=$(elapsed "$t0")
ok "202 from gateway-a, 'completed' with the merged result on gateway-b ($ASYNC_TIME)"

# ---------------------------------------------------------------------------------------------
say "6. kill the NATS node the gateways use, with requests running"
# Which node has the most Busgate connections (the gateways' and the adapters'): kill that one.
victim="" most=-1
for n in nats-1 nats-2 nats-3; do
  count=$(probe_once "${P}_bus" "http://$n:8222/connz?limit=1024" | python3 -c '
import json, sys
body = sys.stdin.read().rsplit("\n", 2)[0]
print(sum(1 for c in json.loads(body)["connections"] if c.get("name", "").startswith("busgate")))' || echo 0)
  echo "  $n: $count Busgate connections"
  if [ "$count" -gt "$most" ]; then victim=$n most=$count; fi
done
load_loop() { # sends merged requests back to back through the load balancer until told to stop
  local deadline=$(($(now_ms) + 90000)) out code complete
  while [ ! -e "$WORK/load.stop" ] && [ "$(now_ms)" -lt "$deadline" ]; do
    out=$(public "$LB" /api/order -H 'content-type: application/json' -d '{"order_id":"L1"}' 2>/dev/null) || true
    code=${out##*$'\n'}
    complete=0
    [[ $out == *'"complete":true'* ]] && complete=1
    echo "$(now_ms) ${code:-000} $complete" >>"$WORK/load.log"
  done
}
: >"$WORK/load.log"
load_loop &
LOAD_PID=$!
count_ok_since() { awk -v t="$1" '$1 >= t && $2 == 200 && $3 == 1 { n++ } END { exit !(n >= '"$2"') }' "$WORK/load.log"; }
wait_for 30 "20 answers before the kill" count_ok_since 0 20 || fail "no steady answers before the kill"
t_kill=$(now_ms)
podman kill "$(ctr "$victim")" >/dev/null 2>>"$WORK/podman.log" || fail "podman kill $victim"
# JetStream with 2 of 3 nodes: asynchronous requests are stored and completed again once the
# streams whose leader was on the lost node have elected another (until then a submit is
# refused with 503, and nothing is stored). A request processed while the adapters are still
# moving to another node ends `failed` (503 no_responders: the gateway does not retry it), so a
# request is submitted again until one completes.
refused=0 failed=0
submit_async() {
  public "$LB" /api/orders/A3 -H 'Prefer: respond-async' >"$WORK/submit.out" || return 1
  json_check "$WORK/submit.out" "status == 202" >/dev/null && return 0
  json_check "$WORK/submit.out" "status == 503" >/dev/null && refused=$((refused + 1))
  return 1
}
async_final() { # BASE REQUEST_ID: completed or failed
  public "$1" "/api/requests/$2" >"$WORK/poll-async.out" &&
    json_check "$WORK/poll-async.out" "status == 200 and b['status'] in ('completed', 'failed')"
}
deadline=$(($(now_ms) + 90000))
while :; do
  if submit_async; then
    REQ=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().rsplit("\n", 2)[0])["request_id"])' "$WORK/submit.out")
    wait_for 30 "request $REQ finished" async_final "$LB" "$REQ" || fail "asynchronous request $REQ not finished"
    json_check "$WORK/poll-async.out" "b['status'] == 'completed' and b['result']['complete'] is True" >/dev/null && break
    json_check "$WORK/poll-async.out" "b['http_status'] == 503" >/dev/null ||
      { show_log "$WORK/poll-async.out" 5; fail "asynchronous request after the kill failed other than with 503"; }
    failed=$((failed + 1))
  fi
  [ "$(now_ms)" -lt "$deadline" ] || fail "no asynchronous request completed within 90 s of the kill"
  sleep 0.2 # the pause between two submits
done
ASYNC_AFTER_KILL=$(($(now_ms) - t_kill))
ASYNC_KILL_REPORT="an asynchronous request completed $(awk -v ms="$ASYNC_AFTER_KILL" 'BEGIN { printf "%.1f s", ms / 1000 }') after the kill; before it, $refused submits refused with 503 and $failed accepted but failed with 503"
# Answers go on: 100 complete merged answers after the kill, and the last 20 all good.
last20_ok() { tail -n 20 "$WORK/load.log" | awk '$2 != 200 || $3 != 1 { bad = 1 } END { exit bad }'; }
wait_for 60 "100 merged answers after the kill, the last 20 all complete" \
  eval "count_ok_since $t_kill 100 && last20_ok" || { touch "$WORK/load.stop"; wait "$LOAD_PID"; fail "answers did not go on after the kill"; }
touch "$WORK/load.stop"
wait "$LOAD_PID" || true
KILL_REPORT=$(python3 - "$WORK/load.log" "$t_kill" <<'EOF'
import sys
from collections import Counter
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
kill = int(sys.argv[2])
before = [r for r in rows if int(r[0]) < kill]
after = [r for r in rows if int(r[0]) >= kill]
bad = [r for r in after if r[1] != "200" or r[2] != "1"]
statuses = Counter(r[1] if r[2] == "1" or r[1] != "200" else "200 incomplete" for r in bad)
window = f", from {int(bad[0][0]) - kill} to {int(bad[-1][0]) - kill} ms after the kill" if bad else ""
span = (int(after[-1][0]) - kill) / 1000 if after else 0
print(f"before the kill: {len(before)} sent, {sum(1 for r in before if r[1] == '200' and r[2] == '1')} ok; "
      f"after ({span:.1f} s): {len(after)} sent, {len(after) - len(bad)} ok, {len(bad)} errors"
      + (" (" + ", ".join(f"{n}x {s}" for s, n in statuses.items()) + ")" if bad else "") + window)
EOF
)
ok "killed $victim (SIGKILL): $KILL_REPORT"
ok "with $victim down: $ASYNC_KILL_REPORT (streams and buckets are R3)"
t0=$(now_ms)
podman start "$(ctr "$victim")" >/dev/null 2>>"$WORK/podman.log" || fail "podman start $victim"
# /healthz answers 200 once the node's JetStream has caught up with the cluster.
node_healthy() { probe_once "${P}_bus" "http://$1:8222/healthz" >"$WORK/healthz.out" && json_check "$WORK/healthz.out" "status == 200"; }
wait_for 90 "$victim back in the cluster, JetStream current" node_healthy "$victim" || fail "$victim did not rejoin"
# Its peers answer 503 ("JetStream stream ... is not current") while they catch up with it:
# what follows asks them, so it waits (bounded) until every node is current again.
all_nodes_healthy() { node_healthy nats-1 && node_healthy nats-2 && node_healthy nats-3; }
wait_for 90 "every NATS node current after the restart" all_nodes_healthy || fail "the cluster is not current after restarting $victim"
wait_for 30 "gateway-a and gateway-b ready" eval 'ready gateway-a && ready gateway-b' || fail "a gateway is not ready"
ok "$victim restarted: back in the cluster with JetStream current, both gateways ready ($(elapsed "$t0"))"

# ---------------------------------------------------------------------------------------------
# Sections 7 to 9 each need only the stack as section 6 leaves it, not each other: each runs in
# a subshell of its own, so its first failure ends that section and the next ones still run.
FAILED=0
section() { # TITLE FUNCTION
  say "$1"
  local rc=0
  set +e
  (
    set -e
    trap 'echo "$PASSED" >"$WORK/section.passed"' EXIT
    "$2"
  )
  rc=$?
  set -e
  PASSED=$(cat "$WORK/section.passed")
  if [ "$rc" != 0 ]; then
    FAILED=$((FAILED + 1))
    echo "  FAIL section '$1' ended at its first failure; the next sections still run" >&2
  fi
}

# ---------------------------------------------------------------------------------------------
section_admin_listener() {
admin /admin/v1/routes -H @"$WORK/admin.header" >"$WORK/admin.out" 2>&1 &&
  json_check "$WORK/admin.out" "status == 200 and any(r['name'] == 'order' for r in b['items'])" ||
  { show_log "$WORK/admin.out" 5; fail "admin API on 127.0.0.1:$BUSGATE_ADMIN_PORT"; }
admin /admin/v1/routes >"$WORK/admin.out" 2>&1 && json_check "$WORK/admin.out" "status == 401" ||
  fail "admin API without the token must answer 401"
ok "127.0.0.1:$BUSGATE_ADMIN_PORT: 200 with the token, 401 without"
reachable() { curl -s -o /dev/null --max-time 3 "$@"; }
gateway_ip() { podman network inspect "$1" --format '{{range .Subnets}}{{.Gateway}}{{end}}'; }
EDGE_GW=$(gateway_ip "${P}_edge")
SERVICES_GW=$(gateway_ip "${P}_services")
# The host's own address on the stack's network carries the public port, not the admin port.
reachable "http://$EDGE_GW:$BUSGATE_HTTP_PORT/health/live" || fail "public port not reachable on $EDGE_GW (control)"
if reachable "http://$EDGE_GW:$BUSGATE_ADMIN_PORT/admin/v1/routes"; then fail "admin port reachable on the host's $EDGE_GW"; fi
ok "host address $EDGE_GW (not loopback): public port answers, admin port refused"
# From a container beside the services (where an application container would be).
PROBE_SERVICES=$P-probe-services
probe "$PROBE_SERVICES" "${P}_services" || fail "probe container on ${P}_services"
from_services() { podman exec "$PROBE_SERVICES" curl -s -o /dev/null --max-time 3 "$1" 2>/dev/null; }
from_services "http://$SERVICES_GW:$BUSGATE_HTTP_PORT/health/live" || fail "public port from the services network (control)"
for url in "http://gateway-a:9090/admin/v1/routes" "http://lb:9090/admin/v1/routes" \
  "http://$SERVICES_GW:$BUSGATE_ADMIN_PORT/admin/v1/routes"; do
  if from_services "$url"; then fail "admin reachable from the services network: $url"; fi
done
ok "from the services network: public port answers; gateway-a:9090, lb:9090 and the host's $SERVICES_GW:$BUSGATE_ADMIN_PORT do not"
NATS_IP=$(podman inspect "$(ctr nats-2)" --format "{{(index .NetworkSettings.Networks \"${P}_bus\").IPAddress}}")
nats_monitor_ok() { probe_once "${P}_bus" "http://$NATS_IP:8222/healthz" >"$WORK/nats.out" && json_check "$WORK/nats.out" "status == 200"; }
wait_for 60 "NATS monitoring from the bus network (control)" nats_monitor_ok ||
  fail "NATS monitoring from the bus network (control)"
if from_services "http://$NATS_IP:8222/healthz"; then fail "NATS reachable from the services network at $NATS_IP"; fi
ok "NATS ($NATS_IP, internal network bus) unreachable from the services network, even by address"
}
section "7. the admin listener: on the host's loopback only" section_admin_listener

# ---------------------------------------------------------------------------------------------
section_bad_settings() {
bad_run() { # EXPECTED_TEXT podman-run-args...
  local expect=$1 rc=0
  shift
  podman run --rm --label "io.busgate.test=$P" "$@" >"$WORK/bad.log" 2>&1 || rc=$?
  grep -v 'level=error' "$WORK/bad.log" >"$WORK/bad.txt" || true
  [ "$rc" = 64 ] || { show_log "$WORK/bad.txt"; fail "exit code $rc, not 64: $*"; }
  grep -q "$expect" "$WORK/bad.txt" || { show_log "$WORK/bad.txt"; fail "the log does not say '$expect': $*"; }
  ok "exit 64: $(head -1 "$WORK/bad.txt")"
}
bad_run "http.body_limit" -e BUSGATE_HTTP__BODY_LIMIT=10 "$BUSGATE_IMAGE" gateway
bad_run "unknown field .listn." -e BUSGATE_HTTP__LISTN=0.0.0.0:8080 "$BUSGATE_IMAGE" gateway
bad_run "callbacks.secret" -e BUSGATE_CALLBACKS__SECRET=not-a-secret "$BUSGATE_IMAGE" gateway
# Secret files that are not there (a secret store not mounted): the error names them.
bad_run "admin.token_file: cannot read /run/secrets/busgate-admin-token" \
  -e BUSGATE_ADMIN__TOKEN_FILE=/run/secrets/busgate-admin-token "$BUSGATE_IMAGE" gateway
bad_run '"/run/secrets/busgate.toml" not found' "$BUSGATE_IMAGE" gateway --config /run/secrets/busgate.toml
}
section "8. bad settings: exit code 64 and the reason in the log" section_bad_settings

# ---------------------------------------------------------------------------------------------
section_kube_play() {
t0=$(now_ms)
# kube play makes a podman secret and a volume (the ConfigMap's) named after the manifest's
# objects; a machine that already has them is not this test's to change.
podman secret inspect busgate >/dev/null 2>&1 && fail "a podman secret 'busgate' exists already: the kube test would replace it"
podman volume inspect busgate >/dev/null 2>&1 && fail "a podman volume 'busgate' exists already: the kube test would use it"
# Only the adapters played from the manifest may answer: the stack's are stopped.
podman stop -t 10 "$(ctr adapter-service1)" "$(ctr adapter-service2)" >/dev/null 2>>"$WORK/podman.log"
KUBE_NET=$P-kube
podman network create --label "io.busgate.test=$P" "$KUBE_NET" >/dev/null
# What the manifest calls nats://nats:4222: a node of the stack's cluster, under that name.
podman network connect --alias nats "$KUBE_NET" "$(ctr nats-3)" || fail "connect nats-3 to $KUBE_NET"
# What it calls http://service1 and http://service2 (Kubernetes Services on port 80).
for s in service1 service2; do
  podman run -d --name "$P-kube-$s" --label "io.busgate.test=$P" --network "$KUBE_NET" --network-alias "$s" \
    --sysctl net.ipv4.ip_unprivileged_port_start=80 --entrypoint /usr/local/bin/busgate-worker \
    "$BUSGATE_IMAGE" demo --service "$s" --listen 0.0.0.0:80 >/dev/null 2>>"$WORK/podman.log" || fail "demo $s"
done
# The Secret the manifest reads (podman 4 takes it as a JSON map of base64 values), from stdin.
printf '%s' "$ADMIN_TOKEN" |
  python3 -c 'import base64, json, sys; print(json.dumps({"admin-token": base64.b64encode(sys.stdin.read().encode()).decode()}))' |
  podman secret create busgate - >/dev/null || fail "podman secret create busgate"
KUBE_SECRET=busgate
echo busgate >"$WORK/kube.secret" # for the teardown: this section runs in a subshell
# The manifest as it is, but for one thing: Podman 4 publishes every containerPort on the host
# (0.0.0.0, same port), which would open the admin port on this machine and clash between the
# two replicas. Kubernetes does no such thing; here the ports are dropped and probes use numbers.
# And the stack's NATS has users (authorization.conf): the ConfigMap's nats-url signs in as the
# operator's user (a cluster of your own would give each role its user, as compose.yaml does).
NATS_ADMIN_URL="nats://admin:$BUSGATE_NATS_ADMIN_PASSWORD@nats:4222" PYTHONPATH=$KV python3 - "$ROOT/deploy/k8s/busgate.yaml" "$WORK/kube.yaml" <<'EOF'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "ConfigMap" and "nats-url" in d.get("data", {}):
        d["data"]["nats-url"] = os.environ["NATS_ADMIN_URL"]
    if d["kind"] != "Deployment":
        continue
    for c in d["spec"]["template"]["spec"]["containers"]:
        ports = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = c.get(probe, {}).get("httpGet")
            if get and isinstance(get["port"], str):
                get["port"] = ports[get["port"]]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)
EOF
podman kube play --network "$KUBE_NET" "$WORK/kube.yaml" >"$WORK/kube.log" 2>&1 ||
  { grep -v level=error "$WORK/kube.log" >"$WORK/kube.txt"; show_log "$WORK/kube.txt"; fail "podman kube play"; }
pods=$(podman pod ps --filter "network=$KUBE_NET" --format '{{.Name}}' | sort)
echo "  pods: $(echo $pods)"
[ "$(echo "$pods" | grep -c '^busgate-gateway')" = 2 ] || fail "2 gateway pods expected"
[ "$(echo "$pods" | grep -c '^busgate-adapter')" = 2 ] || fail "2 adapter pods expected"
for pod in $(echo "$pods" | grep '^busgate-gateway'); do
  infra=$(podman pod inspect "$pod" --format '{{.InfraContainerID}}')
  ip=$(podman inspect "$infra" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
  wait_for 60 "a merged answer from $pod ($ip)" merged_ok "http://$ip:8080" K1 || fail "no merged answer from $pod"
  user=$(podman ps --filter "pod=$pod" --format '{{.Names}}' | grep -v infra | xargs podman inspect --format '{{.Config.User}}')
  [ "$user" = 65532:65532 ] || fail "$pod runs as '$user'"
  ok "$pod: merged answer from http://$ip:8080 (user $user)"
done
ok "kube play: 2 gateways and 2 adapter pods (both services each) from deploy/k8s/busgate.yaml answer ($(elapsed "$t0"))"
}
section "9. podman kube play deploy/k8s/busgate.yaml, against the stack's NATS" section_kube_play

# ---------------------------------------------------------------------------------------------
say "summary"
echo "  image sizes:        $SIZES"
echo "  images built in:    $BUILD_TIME (deploy/build-images.sh, binaries from $BIN_DIR)"
echo "  up -> first merged answer through the load balancer: $UP_TO_ANSWER"
echo "  async, submitted on gateway-a, completed on gateway-b: $ASYNC_TIME"
echo "  NATS kill ($victim): synchronous: $KILL_REPORT"
echo "                      $ASYNC_KILL_REPORT"
[ "$FAILED" = 0 ] || exit 1
