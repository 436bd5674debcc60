#!/usr/bin/env bash
# Issue 26: what composition costs. A two-stage route (n2 needs n1's answer) against its two
# stages alone, at one request in flight, on the native merge stack (merge-stack.sh with
# `busgate-bench --print-settings compose`). Prints p50/p90 of
#   - the two-stage overhead over the sum of its stages: the chain's elapsed_ms minus n1's and
#     n2's elapsed_ms, all three measured by the gateway (the issue's figure: ≤ 0.05 ms at p50);
#   - the same for one stage (stage1's elapsed_ms minus n1's): what any route costs besides its
#     source, for comparison;
#   - client-side latencies of chain, stage1, stage2 and chain − (stage1 + stage2).
#   tests/perf/composition-overhead.sh [BIN_DIR]     (default target/release; REQUESTS=3000)
# Needs wrk (the stack's warm-up), nats-server (NATS_SERVER or deploy/install-nats.sh) and the
# release build: cargo build --release --bins -p busgate-gateway -p busgate-workers -p busgate-tests
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/merge-stack.sh"
D=$(mktemp -d)
trap 'stop_merge_stack 2>/dev/null; rm -rf "$D"' EXIT
SETTINGS=compose start_merge_stack "${1:-$ROOT/target/release}" "$D"
python3 "$HERE/composition-overhead.py" "${URL%/bench/merge/12345}" "${REQUESTS:-3000}"
