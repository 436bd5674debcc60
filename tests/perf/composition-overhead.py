#!/usr/bin/env python3
"""The figures of tests/perf/composition-overhead.sh, from a running stack at BASE (one
keep-alive connection, one request in flight, the three routes interleaved).

    composition-overhead.py http://127.0.0.1:PORT REQUESTS
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse


def main():
    base, n = sys.argv[1], int(sys.argv[2])
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port)

    def get(path):
        t = time.perf_counter()
        conn.request("GET", path)
        response = response_body = None
        response = conn.getresponse()
        response_body = response.read()
        took = (time.perf_counter() - t) * 1000
        if response.status != 200:
            sys.exit(f"{path}: {response.status} {response_body[:200]!r}")
        return took, json.loads(response_body)

    for i in range(min(300, n)):
        for route in ("chain", "stage1", "stage2"):
            get(f"/bench/{route}/W{i}")
    chain_over, one_over, client = [], [], {"chain": [], "stage1": [], "stage2": []}
    for i in range(n):
        for route in ("chain", "stage1", "stage2"):
            took, body = get(f"/bench/{route}/O{i}")
            client[route].append(took)
            s = body["sources"]
            if route == "chain":
                assert s["n2"]["status"] == "ok", body
                chain_over.append(body["elapsed_ms"] - s["n1"]["elapsed_ms"] - s["n2"]["elapsed_ms"])
            elif route == "stage1":
                one_over.append(body["elapsed_ms"] - s["n1"]["elapsed_ms"])

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    def line(name, values):
        print(f"{name:<58} p50 {statistics.median(values):7.3f} ms   p90 {pct(values, 0.9):7.3f} ms")

    print(f"{n} requests per route, one in flight")
    line("two-stage overhead over the sum of its stages (gateway)", chain_over)
    line("one-stage overhead over its source (gateway)", one_over)
    for route, values in client.items():
        line(f"client latency {route}", values)
    diff = [c - a - b for c, a, b in zip(client["chain"], client["stage1"], client["stage2"])]
    line("client chain - (stage1 + stage2)", diff)


if __name__ == "__main__":
    main()
