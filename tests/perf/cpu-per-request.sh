#!/usr/bin/env bash
# CPU time, system calls and context switches per request of each process on the native merge
# path (gateway, native worker, nats-server), measured with `perf stat` under `wrk -c64`.
# Compare builds in the same run:  tests/perf/cpu-per-request.sh /tmp/old-bins target/release
# ADAPTERS=1 measures the merge through two adapters to the peers' nginx services instead
# (start them first: tests/perf/peers/peers.sh start).
# Needs perf (Debian linux-perf), wrk, nats-server; a bin dir holds busgate and busgate-worker.
set -u
[ $# -ge 1 ] || set -- "$(cd "$(dirname "$0")/../.." && pwd)/target/release"
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
. "$(dirname "$0")/merge-stack.sh"
one() {
  start_merge_stack "$1" "$D"
  echo "$1:"
  cpu_per_request "$URL" gateway:$G worker:$W ${W2:+worker2:$W2} nats-server:$N
  stop_merge_stack
}
for bins in "$@"; do one "$bins"; done
