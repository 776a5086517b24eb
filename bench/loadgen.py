"""A small closed-loop HTTP/1.1 keep-alive load generator, standard library only, so that
bench_release.py can ship it into the host (`ssh host python3 - ARGS < loadgen.py`) and send
the very same requests through nginx over TLS and straight to Gunicorn's unix socket: wrk
cannot speak to a unix socket, and a ratio is only fair with one client for both paths.

One process per connection (no GIL between them). Each sends a request, reads the whole
response and sends the next; after a warm-up, the requests that complete inside the measured
window are counted. Prints one JSON object: requests, errors, rps, p50/p99/max latency (ms),
and where the CPU went: the CPU time every other process on the machine used inside the
measured window (from /proc, summed by command name) and the client's own (its processes'
rusage), each in µs per request. On a host that runs only the service, that splits a request's
cost between Gunicorn, nginx, journald and the client.

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
    latencies, errors, statuses, sessions, first_error, made = [], 0, {}, {}, "", 0
    sock = reader = None
    while (now := time.time()) < end:
        try:
            if sock is None:
                sock = connect(args.target, sessions)
                reader = Reader(sock)
            sent = time.perf_counter()
            sock.sendall(request)
            status, keep = reader.response()
            made += 1
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
    result = {"latencies": latencies, "errors": errors, "statuses": statuses, "made": made}
    out.write(json.dumps({**result, "first_error": first_error}))


def cpu_ticks(exclude: set[int]) -> dict[tuple[int, str], int]:
    """CPU ticks (user + system, all threads) each process but `exclude` (this client's own)
    has used so far, by (pid, command name)."""
    ticks: dict[tuple[int, str], int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                line = stat.read()
        except OSError:  # gone meanwhile
            continue
        name, _, rest = line[line.index("(") + 1 :].rpartition(")")
        fields = rest.split()  # from the state on: utime and stime are proc(5)'s fields 14, 15
        ticks[int(entry.name), name] = int(fields[11]) + int(fields[12])
    return ticks


def window_ticks(before: dict, after: dict) -> dict[str, int]:
    """Ticks used between two snapshots, by command name. A process that ended in between is
    missed; one that started counts whole."""
    used: dict[str, int] = {}
    for (pid, name), ticks in after.items():
        used[name] = used.get(name, 0) + ticks - before.get((pid, name), 0)
    return used


def spread(before: dict, after: dict) -> dict[str, list[int]]:
    """For each command name that more than one process used CPU under (Gunicorn's workers):
    each process's share of it in the window, in %, largest first. Shows whether the load
    reached every worker, or whether the connections all landed on one of them."""
    by_name: dict[str, list[int]] = {}
    for (pid, name), ticks in after.items():
        if used := ticks - before.get((pid, name), 0):
            by_name.setdefault(name, []).append(used)
    return {
        name: sorted((round(100 * t / sum(ticks)) for t in ticks), reverse=True)
        for name, ticks in by_name.items()
        if len(ticks) > 1
    }


def per_request_us(ticks: dict[str, int], requests: int) -> dict[str, float]:
    scale = 1e6 / os.sysconf("SC_CLK_TCK") / max(requests, 1)
    return {name: round(t * scale, 1) for name, t in sorted(ticks.items()) if t * scale >= 1}


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
    pipes, children = [], {os.getpid()}
    for _ in range(args.connections):
        read, write = os.pipe()
        if (child := os.fork()) == 0:
            os.close(read)
            with os.fdopen(write, "w") as out:
                worker(args, request, start, out)
            os._exit(0)
        os.close(write)
        pipes.append(read)
        children.add(child)
    begin = start + args.warmup
    time.sleep(max(0.0, begin - time.time()))
    before = cpu_ticks(children)
    time.sleep(max(0.0, begin + args.seconds - time.time()))
    after = cpu_ticks(children)
    window = window_ticks(before, after)
    results = []
    for read in pipes:
        with os.fdopen(read) as pipe:
            results.append(json.loads(pipe.read() or '{"latencies": [], "errors": 1}'))
    client_seconds = 0.0
    while True:
        try:
            _, _, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        client_seconds += usage.ru_utime + usage.ru_stime
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
        "cpu_us_per_request": per_request_us(window, len(latencies)),
        "cpu_spread_pct": spread(before, after),
        # The client's whole run (warm-up included) over the requests it made in all of it.
        "client_cpu_us_per_request": round(
            client_seconds * 1e6 / max(sum(r.get("made", 0) for r in results), 1), 1
        ),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
