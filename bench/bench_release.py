"""An app-only release under HTTPS load through nginx (issue 5): the deploy's duration and the
p50/p99/max latency and error count of the traffic during it, as a table.
Targets: under 20 s, 0 errors, p99 under 500 ms. Run: `make bench-release` (rehearsal host up).
Not done yet: the nginx+TLS vs unix-socket throughput ratio (wrk cannot speak to a unix socket)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "infra"))
from test_releases import Traffic  # noqa: E402  (the same client the tests use)

HOST_JSON = Path(os.environ.get("PLINTH_REHEARSAL_HOST_JSON") or REPO / ".rehearsal/host.json")


class TimedTraffic(Traffic):
    def __init__(self, rehearsal):
        super().__init__(rehearsal)
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def _connection(self):
        conn = super()._connection()
        request = conn.request

        def timed(*args, **kwargs):
            conn._started = time.perf_counter()
            return request(*args, **kwargs)

        getresponse = conn.getresponse

        def timed_response():
            response = getresponse()
            response.read = _reader(response.read, conn._started, self)
            return response

        conn.request, conn.getresponse = timed, timed_response
        return conn


def _reader(read, started, traffic):
    def wrapped(*args):
        body = read(*args)
        with traffic._lock:
            traffic.latencies.append(time.perf_counter() - started)
        return body

    return wrapped


def main() -> int:
    rehearsal = json.loads(HOST_JSON.read_text())
    env = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(HOST_JSON)}
    env["PLINTH_RELEASE_REVISION"] = f"bench-{int(time.time())}"
    args = [sys.executable, "-m", "pyinfra", "-y", "infra/inventories/rehearsal.py"]
    # Build, preflight and upload first: the timed part is the release as the host sees it.
    with TimedTraffic(rehearsal) as traffic:
        started = time.monotonic()
        run = subprocess.run([*args, "infra/deploys/site.py"], cwd=REPO, env=env,
                             capture_output=True, text=True)  # fmt: skip
        seconds = time.monotonic() - started
    lat = sorted(traffic.latencies) or [0.0]

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

    print("| release (deploy, app changed) | value | target |")
    print("|---|---|---|")
    print(f"| deploy duration | {seconds:.1f} s | < 20 s |")
    print(f"| requests during it | {len(traffic.latencies)} | |")
    print(f"| errors | {len(traffic.failures)} | 0 |")
    print(f"| p50 latency | {pct(50):.1f} ms | |")
    print(f"| p99 latency | {pct(99):.1f} ms | < 500 ms |")
    print(f"| max latency | {lat[-1] * 1000:.1f} ms | |")
    print(f"| deploy exit code | {run.returncode} | 0 |")
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
