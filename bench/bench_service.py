"""Throughput and latency of /healthz and of an iris prediction (with its database write).

Starts a throwaway PostgreSQL (default durability: fsync and synchronous_commit on), applies
migrations, runs ``plinth serve`` with 2 workers on loopback and loads each endpoint with wrk
(32 connections), then prints rps, p50, p99 and the predict/healthz ratio.

    uv run python bench/bench_service.py [--duration 15] [--connections 32]

wrk is installed with apt-get when missing (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "service"))
from throwaway_pg import ThrowawayPostgres, free_port  # noqa: E402

PREDICT_BODY = {
    "inputs": [
        {
            "sepal_length_cm": 5.1,
            "sepal_width_cm": 3.5,
            "petal_length_cm": 1.4,
            "petal_width_cm": 0.2,
        }
    ]
}
# wrk prints its latency percentiles with --latency; a Lua script makes the POST.
LUA_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""
TARGET_RATIO = 0.40
TARGET_P99_MS = 50.0


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("wrk is not installable")


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(wrk: str, url: str, *, connections: int, seconds: int, script: str | None) -> dict:
    command = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        command[1:1] = ["-s", script]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", output).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": int(errors.group(1)) if errors else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=32)
    arguments = parser.parse_args()
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="plinth-bench-"))
    with ThrowawayPostgres(durable=True) as database:
        port = free_port()
        environment = {
            **os.environ,
            "PLINTH_DATABASE_URL": database.url(),
            "PLINTH_ENVIRONMENT": "production",
            "PLINTH_WORKERS": "2",
            "PLINTH_BIND": f"127.0.0.1:{port}",
            "PLINTH_LOG_LEVEL": "warning",
            "PLINTH_DB_POOL_SIZE": "10",
            "RUNTIME_DIRECTORY": str(workdir),
        }
        subprocess.run(["plinth", "migrate"], env=environment, check=True, capture_output=True)
        log = (workdir / "serve.log").open("wb")
        server = subprocess.Popen(["plinth", "serve"], env=environment, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("service did not become ready")
                time.sleep(0.3)
            script = workdir / "predict.lua"
            script.write_text(LUA_POST.format(body=json.dumps(PREDICT_BODY)))
            # Warm both workers (connections, pools, code paths) before measuring.
            run_wrk(wrk, base + "/healthz", connections=8, seconds=2, script=None)
            run_wrk(
                wrk, base + "/v1/models/iris/predict", connections=8, seconds=2, script=str(script)
            )
            results = {
                "healthz": run_wrk(
                    wrk, base + "/healthz", connections=arguments.connections,
                    seconds=arguments.duration, script=None,
                ),
                "predict": run_wrk(
                    wrk, base + "/v1/models/iris/predict", connections=arguments.connections,
                    seconds=arguments.duration, script=str(script),
                ),
            }  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            log.close()
    ratio = results["predict"]["rps"] / results["healthz"]["rps"]
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nGunicorn 2 workers, {arguments.connections} connections, {arguments.duration}s each")
    # The host may be shared: the load average says how far to trust the absolute figures.
    print(f"load average after the run (1/5/15 min): {load}")
    print(f"{'endpoint':<10} {'rps':>10} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>8}")
    for name, result in results.items():
        print(
            f"{name:<10} {result['rps']:>10.0f} {result['p50']:>9.2f} {result['p99']:>9.2f}"
            f" {result['non2xx']:>8}"
        )
    print(f"ratio predict/healthz: {ratio:.2f} (target >= {TARGET_RATIO:.2f})")
    met = ratio >= TARGET_RATIO and results["predict"]["p99"] < TARGET_P99_MS
    met = met and results["healthz"]["p99"] < TARGET_P99_MS
    print(f"targets {'met' if met else 'NOT met'} (p99 < {TARGET_P99_MS:.0f} ms)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
