#!/usr/bin/env python3
"""The share of perf samples whose call stack holds each PATTERN (inclusive time).

Reads `perf script` output on stdin; used by profile.sh and msgs-per-request.sh:
    perf script -i perf.data | tests/perf/stack-shares.py tcp_sendmsg epoll_wait
"""
import sys


def main(patterns):
    counts = dict.fromkeys(patterns, 0)
    total = 0
    stack = []

    def flush():
        nonlocal total
        if stack:
            total += 1
            text = "\n".join(stack)
            for p in patterns:
                counts[p] += p in text

    for line in sys.stdin:
        if not line.strip():
            flush()
            stack.clear()
        elif line[0] in "\t ":
            stack.append(line.strip())
    flush()
    print(f"{total} samples; share of stacks holding:")
    for p in patterns:
        print(f"{100 * counts[p] / max(total, 1):5.1f} %  {p}")


if __name__ == "__main__":
    main(sys.argv[1:])
