#!/usr/bin/env python3
"""What a gather in flight costs the gateway, quicker than a whole benchmark run.

Starts nats-server, a native worker (n1, n2) and a gateway from BIN_DIR on free ports, opens N
keep-alive connections that each serve one quick request, then holds N requests on a slow source
(`slow-` orders: 3 s, deadline 30 s) and prints the gateway's RSS: before, with the connections
idle, at most while the requests were admitted, and settled with all of them in flight.

    tests/perf/held-gathers.py [BIN_DIR] [N] [--preload] [--heaptrack]

--preload   8 s of `wrk -t2 -c64` on a two-source merge first, as the benchmark's load does.
--heaptrack runs the gateway under heaptrack and keeps the file. mimalloc bypasses heaptrack:
            give it a gateway built without the `#[global_allocator]` (gateway/src/main.rs), then
            `heaptrack_print -f FILE --flamegraph-cost-type peak -F stacks.txt`.
Needs nats-server, wrk (--preload) and heaptrack (--heaptrack); N file descriptors each side.
The gateway's caps (http.max_connections, http.max_in_flight) are raised to 11,000 for it
(busgate-bench --print-settings held): N up to 10,000 fits with the /metrics reads.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
args = [a for a in sys.argv[1:] if not a.startswith("--")]
bins = args[0] if args else os.path.join(ROOT, "target", "release")
n = int(args[1]) if len(args) > 1 else 10000
heaptrack = "--heaptrack" in sys.argv


def bench_binary():
    """busgate-bench, which prints the gateway's settings (the fixture the tests and the benchmark
    use, tests/src/fixture.rs): the one in BIN_DIR, else this checkout's release or debug build."""
    for folder in (bins, os.path.join(ROOT, "target", "release"), os.path.join(ROOT, "target", "debug")):
        path = os.path.join(folder, "busgate-bench")
        if os.access(path, os.X_OK):
            return path
    sys.exit("busgate-bench is missing: cargo build --release -p busgate-tests --bin busgate-bench")


CONFIG = subprocess.run([bench_binary(), "--print-settings", "held"], check=True, capture_output=True,
                        text=True).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def settled_rss_kib(pid):
    """RSS once it stops moving between two looks 50 ms apart (bounded: 2 s)."""
    last = rss_kib(pid)
    for _ in range(40):
        time.sleep(0.05)
        now = rss_kib(pid)
        if now == last:
            break
        last = now
    return last


def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def read_answer(sock):
    """Reads one HTTP response framed by Content-Length."""
    seen = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return
        seen += chunk
        head = seen.find(b"\r\n\r\n")
        if head >= 0:
            m = re.search(rb"content-length: *(\d+)", seen[:head], re.I)
            if len(seen) >= head + 4 + int(m.group(1) if m else 0):
                return


def gateway_pid(proc):
    """The gateway's own pid (under heaptrack, the child of the wrapper)."""
    if not heaptrack:
        return proc.pid
    for _ in range(100):
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        for pid in found.stdout.split():
            if "gateway" in open(f"/proc/{pid}/cmdline").read():
                return int(pid)
        time.sleep(0.1)
    sys.exit("no gateway process under heaptrack")


work = tempfile.mkdtemp()
nats_port, http_port, admin_port = free_port(), free_port(), free_port()
with open(f"{work}/gw.toml", "w") as f:
    f.write(CONFIG)
env = dict(os.environ, BUSGATE_NATS__URL=f"nats://127.0.0.1:{nats_port}", BUSGATE_LOG__LEVEL="warn",
           BUSGATE_HTTP__LISTEN=f"127.0.0.1:{http_port}", BUSGATE_ADMIN__LISTEN=f"127.0.0.1:{admin_port}")
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
procs = [subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port)], **quiet)]
sockets = []
pid = None
try:
    time.sleep(0.3)
    procs.append(subprocess.Popen([f"{bins}/busgate-worker", "native", "--service", "n1", "--service", "n2"],
                                  env=env, **quiet))
    command = [f"{bins}/busgate", "gateway", "--config", f"{work}/gw.toml"]
    if heaptrack:
        command = ["heaptrack", "-o", f"{work}/heap"] + command
    gateway = subprocess.Popen(command, env=env, **quiet)
    procs.append(gateway)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/bench/merge/1", timeout=2).read()
            break
        except OSError:
            time.sleep(0.1)
    pid = gateway_pid(gateway)
    if "--preload" in sys.argv:
        subprocess.run(["wrk", "-t2", "-c64", "-d8s", f"http://127.0.0.1:{http_port}/bench/merge/12345"], **quiet)
    before = settled_rss_kib(pid)
    for _ in range(n):
        sockets.append(socket.create_connection(("127.0.0.1", http_port)))
    for s in sockets:
        s.sendall(b"GET /bench/hold/warm HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answer(s)
    connected = settled_rss_kib(pid)
    for i, s in enumerate(sockets):
        s.sendall(f"GET /bench/hold/slow-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    admitting, in_flight = 0, 0.0
    for _ in range(40):
        in_flight = metric(http_port, "busgate_gathers_in_flight")
        admitting = max(admitting, rss_kib(pid))
        if in_flight >= n:
            break
        time.sleep(0.05)
    held = settled_rss_kib(pid)
    per = max(in_flight, 1)
    print(f"{in_flight:.0f} gathers in flight. RSS: {before} KiB before, {connected} KiB with {n} idle "
          f"connections, {max(admitting, held)} KiB at most while admitting, {held} KiB settled.")
    print(f"{(held - connected) / per:.2f} KiB per gather in flight (at most {(max(admitting, held) - connected) / per:.2f} "
          f"while admitting); {(connected - before) / n:.2f} KiB per idle keep-alive connection.")
finally:
    for s in sockets:
        s.close()
    if heaptrack and pid:
        # heaptrack's wrapper does not pass the signal on: stop the gateway itself.
        os.kill(pid, signal.SIGINT)
    for p in reversed(procs):
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if heaptrack:
        print("heaptrack:", [f"{work}/{f}" for f in os.listdir(work) if f.startswith("heap")])
