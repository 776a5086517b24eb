"""Throughput and latency of /healthz and of an iris prediction (with its database write).

Starts a throwaway PostgreSQL (default durability: fsync and synchronous_commit on), applies
migrations, runs ``plinth serve`` with 2 workers on loopback and loads each endpoint with wrk
(32 connections), then prints rps, p50, p99, the predict/healthz ratio and the CPU time spent
per request by the Gunicorn workers and by PostgreSQL (every process of the throwaway server:
backends, WAL writer, checkpointer). Wall-clock figures depend on what else the machine runs;
CPU per request does much less, so it is the figure to compare between runs on a shared host.

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

import httpx2

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


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime+stime+cutime+cstime in clock ticks) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the ")" closing the command name: state ppid ... utime(14) stime(15)
        # cutime(16) cstime(17), numbered from 1 for the pid.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), sum(int(fields[i]) for i in range(11, 15)))
    return table


def cpu_seconds(roots: list[int]) -> float:
    """CPU used so far by ``roots`` and all their descendants. Counting each live process's
    own time plus the time of its children it has reaped (cutime/cstime) covers exited
    workers and backends too, without counting anything twice."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0, [pid for pid in roots if pid in table]
    while pending:
        pid = pending.pop()
        total += table[pid][1]
        pending.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: int,
    script: str | None,
    app_pid: int,
    db_pid: int,
) -> dict:
    command = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        command[1:1] = ["-s", script]
    app_before, db_before = cpu_seconds([app_pid]), cpu_seconds([db_pid])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    app_cpu = cpu_seconds([app_pid]) - app_before
    db_cpu = cpu_seconds([db_pid]) - db_before
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", output).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "non2xx": int(errors.group(1)) if errors else 0,
        "app_ms": app_cpu * 1000 / max(requests, 1),
        "db_ms": db_cpu * 1000 / max(requests, 1),
    }


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
            deadline = time.monotonic() + 180  # a busy shared host boots workers slowly
            while True:
                try:
                    if httpx2.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("service did not become ready")
                time.sleep(0.3)
            script = workdir / "predict.lua"
            script.write_text(LUA_POST.format(body=json.dumps(PREDICT_BODY)))
            pids = {"app_pid": server.pid, "db_pid": database.process.pid}
            # Warm both workers (connections, pools, code paths) before measuring.
            run_wrk(wrk, base + "/healthz", connections=8, seconds=2, script=None, **pids)
            run_wrk(
                wrk,
                base + "/v1/models/iris/predict",
                connections=8,
                seconds=2,
                script=str(script),
                **pids,
            )
            results = {
                "healthz": run_wrk(
                    wrk, base + "/healthz", connections=arguments.connections,
                    seconds=arguments.duration, script=None, **pids,
                ),
                "predict": run_wrk(
                    wrk, base + "/v1/models/iris/predict", connections=arguments.connections,
                    seconds=arguments.duration, script=str(script), **pids,
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
    print(
        f"{'endpoint':<10} {'rps':>10} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>8}"
        f" {'CPU ms/req':>11} {'(app':>7} {'+ db)':>7}"
    )
    for name, result in results.items():
        print(
            f"{name:<10} {result['rps']:>10.0f} {result['p50']:>9.2f} {result['p99']:>9.2f}"
            f" {result['non2xx']:>8} {result['app_ms'] + result['db_ms']:>11.3f}"
            f" {result['app_ms']:>7.3f} {result['db_ms']:>7.3f}"
        )
    print(f"ratio predict/healthz: {ratio:.2f} (target >= {TARGET_RATIO:.2f})")
    met = ratio >= TARGET_RATIO and results["predict"]["p99"] < TARGET_P99_MS
    met = met and results["healthz"]["p99"] < TARGET_P99_MS
    print(f"targets {'met' if met else 'NOT met'} (p99 < {TARGET_P99_MS:.0f} ms)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
