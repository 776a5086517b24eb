"""A small closed-loop HTTP/1.1 keep-alive load generator, standard library only, so that
bench_release.py can ship it into the host (`ssh host python3 - ARGS < loadgen.py`) and send
the very same requests through nginx over TLS and straight to Gunicorn's unix socket: wrk
cannot speak to a unix socket, and a ratio is only fair with one client for both paths.

One process per connection (no GIL between them). Each sends a request, reads the whole
response and sends the next; after a warm-up, the requests that complete inside the measured
window are counted. Prints one JSON object: requests, errors, rps, p50/p99/max latency (ms).

  python3 loadgen.py tls:127.0.0.1:443:example.org GET /healthz --connections 4 --seconds 10
  python3 loadgen.py unix:/run/app.sock POST /v1/x --body '{"a": 1}' --connections 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import time


def connect(target: str, tls_sessions: dict) -> socket.socket:
    kind, _, rest = target.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(rest)
        return sock
    address, port, server_name = rest.split(":", 2)
    raw = socket.create_connection((address, int(port)), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "tcp":
        return raw
    context = tls_sessions.setdefault("context", _client_context())
    # The session of this client's last connection is resumed, as a browser would.
    return context.wrap_socket(
        raw, server_hostname=server_name, session=tls_sessions.get("session")
    )


def _client_context() -> ssl.SSLContext:
    # Measures throughput, not trust: the benchmark talks to the host's own nginx.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Reader:
    """Reads whole HTTP/1.1 responses (Content-Length or chunked) from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buffer += chunk

    def _until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        line, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self) -> tuple[int, bool]:
        """(status, whether the server keeps the connection open)."""
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            self._exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while size := int(self._until(b"\r\n").split(b";")[0], 16):
                self._exactly(size + 2)
            self._until(b"\r\n")
        return status, headers.get("connection") != "close"


def close(sock: socket.socket | None, tls_sessions: dict) -> None:
    """Closes `sock`, keeping its TLS session (a TLS 1.3 ticket arrives after the handshake)."""
    if isinstance(sock, ssl.SSLSocket) and sock.session is not None:
        tls_sessions["session"] = sock.session
    if sock is not None:
        sock.close()


def worker(args, request: bytes, start: float, out) -> None:
    """One connection's loop; writes its counts and latencies (ms) as JSON to `out`."""
    begin, end = start + args.warmup, start + args.warmup + args.seconds
    latencies, errors, statuses, sessions, first_error = [], 0, {}, {}, ""
    sock = reader = None
    while (now := time.time()) < end:
        try:
            if sock is None:
                sock = connect(args.target, sessions)
                reader = Reader(sock)
            sent = time.perf_counter()
            sock.sendall(request)
            status, keep = reader.response()
            took = (time.perf_counter() - sent) * 1000
            if now >= begin:
                statuses[status] = statuses.get(status, 0) + 1
                if status >= 500 or status == 429:
                    errors += 1
                else:
                    latencies.append(took)
            if not keep:
                sock = close(sock, sessions)
        except (OSError, ValueError, IndexError) as error:
            if now >= begin:
                errors += 1
                first_error = first_error or f"{type(error).__name__}: {error}"
            sock = close(sock, sessions)
    result = {"latencies": latencies, "errors": errors, "statuses": statuses}
    out.write(json.dumps({**result, "first_error": first_error}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="tls:ADDRESS:PORT:SERVER_NAME | tcp:... | unix:PATH")
    parser.add_argument("method")
    parser.add_argument("path")
    parser.add_argument("--host", default="localhost", help="the Host header")
    parser.add_argument("--body", default="")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    args = parser.parse_args()
    body = args.body.encode()
    head = f"{args.method} {args.path} HTTP/1.1\r\nHost: {args.host}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    request = head.encode() + b"\r\n" + body
    start = time.time() + 0.5  # every connection starts its clock together
    pipes = []
    for _ in range(args.connections):
        read, write = os.pipe()
        if os.fork() == 0:
            os.close(read)
            with os.fdopen(write, "w") as out:
                worker(args, request, start, out)
            os._exit(0)
        os.close(write)
        pipes.append(read)
    results = []
    for read in pipes:
        with os.fdopen(read) as pipe:
            results.append(json.loads(pipe.read() or '{"latencies": [], "errors": 1}'))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    latencies = sorted(lat for result in results for lat in result["latencies"])
    statuses: dict[str, int] = {}
    for result in results:
        for status, count in result.get("statuses", {}).items():
            statuses[status] = statuses.get(status, 0) + count

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else 0

    summary = {
        "requests": len(latencies),
        "errors": sum(result["errors"] for result in results),
        "statuses": statuses,
        "rps": len(latencies) / args.seconds,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] if latencies else 0,
        "first_error": next((r["first_error"] for r in results if r.get("first_error")), ""),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
