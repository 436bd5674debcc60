#!/usr/bin/env python3
"""One merged request as it crosses the bus: a plain NATS subscriber (no client library, the
protocol by hand) on `busgate.svc.>` and `_INBOX.>` prints every message it sees for a few
seconds: the operation line, the header block and the payload, with their sizes.

    tests/perf/nats-capture.py NATS_PORT [SECONDS] &   # prints "ready" once subscribed
    curl http://127.0.0.1:GATEWAY/bench/merge/12345

Used by tests/perf/msgs-per-request.sh. Only for a single request: under load it would add a
copy of every message to the server's work.
"""
import socket
import sys
import time

port = int(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(0.2)
buf = b""


def more():
    global buf
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        return False
    if not chunk:
        raise SystemExit("closed")
    buf += chunk
    return True


while b"\r\n" not in buf:
    more()
buf = buf.split(b"\r\n", 1)[1]  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1,'
          b'"name":"capture"}\r\nSUB busgate.svc.> 1\r\nSUB _INBOX.> 2\r\nPING\r\n')
while b"PONG\r\n" not in buf:
    more()
buf = buf.split(b"PONG\r\n", 1)[1]
print("ready", flush=True)
end = time.time() + seconds
while time.time() < end:
    while b"\r\n" in buf:
        line, rest = buf.split(b"\r\n", 1)
        words = line.split()
        if not words:
            buf = rest
            continue
        op = words[0].upper()
        if op in (b"MSG", b"HMSG"):
            total = int(words[-1])
            hdr = int(words[-2]) if op == b"HMSG" else 0
            if len(rest) < total + 2:
                break
            body, buf = rest[:total], rest[total + 2:]
            headers, payload = body[:hdr], body[hdr:]
            wire = len(line) + 2 + total + 2
            subject = words[1].decode()
            kind = "request" if subject.startswith("busgate.svc.") else "reply"
            print(f"--- {kind} on {subject}: {wire} bytes on the wire as the server sends it "
                  f"(operation line {len(line) + 2}, headers {hdr}, payload {len(payload)})")
            print(f"    {line.decode()}")
            for h in headers.decode(errors="replace").split("\r\n"):
                if h:
                    print(f"    | {h}")
            print(f"    {payload.decode(errors='replace')}")
        else:
            if op == b"PING":
                s.sendall(b"PONG\r\n")
            buf = rest
    more()
sys.stdout.flush()
