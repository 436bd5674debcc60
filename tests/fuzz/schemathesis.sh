#!/usr/bin/env bash
# The outside fuzzer: schemathesis (pinned, from PyPI) against a real stack on free ports
# (nats-server with JetStream, a gateway with the built-in configuration, a native worker
# serving service1 and service2 so that routes answer), driven by the gateway's own OpenAPI
# document (gateway/openapi.json):
#   - public operations against the public listener,
#   - admin operations, with the bearer token, against the admin listener,
# with the checks not_a_server_error, status_code_conformance, content_type_conformance and
# response_schema_conformance. Exits non-zero on any finding, on an ERROR the gateway logs
# while fuzzed, when the admin run made no write with the token (it would only have seen 401s),
# or when the stack does not start. The token reaches schemathesis through the environment and
# its configuration file, never its argv.
#
#   tests/fuzz/schemathesis.sh [BIN_DIR]     BIN_DIR: where busgate and busgate-worker are
#                                            (default target/debug of this checkout)
# Environment: NATS_SERVER (default: deploy/install-nats.sh), FUZZ_MAX_EXAMPLES (default 40),
# FUZZ_SEED (default: a fixed seed, so that a run is repeatable), SCHEMATHESIS_VERSION, FUZZ_KEEP
# (set: keep the logs and reports).
#
# schemathesis is installed into a venv of its own under $BUSGATE_HOME (default
# ~/.local/share/busgate), once per version, like deploy/install-nats.sh does for nats-server.
# Its command-line flags differ between major versions: these are 4.x's.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BINS=${1:-$ROOT/target/debug}
VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
PREFIX=${BUSGATE_HOME:-$HOME/.local/share/busgate}
VENV="$PREFIX/schemathesis-$VERSION"
ST="$VENV/bin/schemathesis"
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-40}
SEED=${FUZZ_SEED:-15}

for b in busgate busgate-worker; do
  [ -x "$BINS/$b" ] || { echo "fuzz: $BINS/$b is missing: cargo build --workspace --bins --locked" >&2; exit 2; }
done
if ! { [ -x "$ST" ] && "$ST" --version 2>/dev/null | grep -q "version $VERSION\$"; }; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
fi
NATS_SERVER=${NATS_SERVER:-$(deploy/install-nats.sh)}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${FUZZ_KEEP:-}" ]; then echo "fuzz: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

NP=$(port); HP=$(port); AP=$(port)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
"$NATS_SERVER" -a 127.0.0.1 -p "$NP" -js -sd "$WORK/js" > "$WORK/nats.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do grep -q "Server is ready" "$WORK/nats.log" && break; sleep 0.1; done
export BUSGATE_NATS__URL=nats://127.0.0.1:$NP BUSGATE_LOG__LEVEL=warn
"$BINS/busgate-worker" native --service service1 --service service2 > "$WORK/worker.log" 2>&1 & PIDS+=($!)
# The token comes through the environment, never argv.
BUSGATE_HTTP__LISTEN=127.0.0.1:$HP BUSGATE_ADMIN__LISTEN=127.0.0.1:$AP BUSGATE_ADMIN__TOKEN=$TOKEN \
  BUSGATE_LOG__FORMAT=json BUSGATE_LOG__LEVEL=warn,busgate::audit=info "$BINS/busgate" gateway > "$WORK/gateway.log" 2>&1 & PIDS+=($!)
PUBLIC=http://127.0.0.1:$HP
ADMIN=http://127.0.0.1:$AP
# Bounded wait: ready (NATS, JetStream, configuration).
for _ in $(seq 150); do
  curl -sf "$PUBLIC/health/ready" > /dev/null && break
  sleep 0.1
done
# The public run calls as a client: one made through the admin API, its key kept in a file
# and the environment (never argv).
curl -sf -H @<(printf 'Authorization: Bearer %s' "$TOKEN") -H 'content-type: application/json' \
  -d '{"name":"fuzz","spec":{"description":"schemathesis"}}' "$ADMIN/admin/v1/clients" > "$WORK/client.json" || true
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"]["secret"])' "$WORK/client.json" 2>/dev/null || true)
if ! curl -sf -H @<(printf 'X-API-Key: %s' "$KEY") "$PUBLIC/api/orders/A1" > /dev/null; then
  echo "fuzz: the stack did not become ready in 15 s" >&2
  cat "$WORK/gateway.log" "$WORK/worker.log" >&2
  exit 2
fi

# Errors the gateway logs from here on are findings too.
LOGGED=$(wc -l < "$WORK/gateway.log")
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
run() {
  local name=$1; shift
  echo "fuzz: $name"
  # --phases without stateful: the document has no links to chain operations by.
  # From the work directory: schemathesis keeps its example database in the current one.
  (cd "$WORK" && "$ST" --config-file "$WORK/$name.toml" run "$ADMIN/admin/v1/openapi.json" --checks "$CHECKS" --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" --phases examples,coverage,fuzzing --workers 1 --request-timeout 10 \
    --warnings off --report junit --report-dir "$WORK/report-$name" "$@")
}
status=0
# The admin token reaches schemathesis through the environment and its configuration file,
# not its argv.
printf 'headers = { X-API-Key = "${BUSGATE_FUZZ_KEY}" }\n' > "$WORK/public.toml"
printf 'headers = { Authorization = "Bearer ${BUSGATE_FUZZ_TOKEN}" }\n' > "$WORK/admin.toml"
# Public first: the admin run may change the configuration the public operations run on.
BUSGATE_FUZZ_KEY=$KEY run public --url "$PUBLIC" --exclude-path-regex '^/admin/' || status=1
BUSGATE_FUZZ_TOKEN=$TOKEN run admin --url "$ADMIN" --include-path-regex '^/admin/' || status=1
if tail -n +"$((LOGGED + 1))" "$WORK/gateway.log" | grep -q '"level":"ERROR"'; then
  echo "fuzz: the gateway logged errors:" >&2
  tail -n +"$((LOGGED + 1))" "$WORK/gateway.log" | grep '"level":"ERROR"' | head -20 >&2
  status=1
fi
# The admin run must have been let in: its writes are audited under the token's fingerprint.
AUTHENTICATED=$(grep '"target":"busgate::audit"' "$WORK/gateway.log" | grep -vc '"token":"\(none\|invalid\)"' || true)
if [ "$AUTHENTICATED" = 0 ]; then
  echo "fuzz: no admin write was made with the token: the admin run was not authenticated" >&2
  status=1
fi
if ! kill -0 "${PIDS[2]}" 2>/dev/null; then
  echo "fuzz: the gateway died" >&2
  tail -20 "$WORK/gateway.log" >&2
  status=1
fi
[ "$status" = 0 ] && echo "fuzz: schemathesis found nothing"
exit "$status"
