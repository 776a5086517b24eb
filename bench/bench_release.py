"""Releases under load on the rehearsal host (issue 5), as a table.

1. An app-only release under HTTPS load through nginx (4 keep-alive clients on this machine
   asking /version): the deploy's duration and the p50/p99/max latency and error count of the
   traffic during it. Targets: under 20 s, 0 errors, p99 under 500 ms. Measured twice: as
   `make release-*` does it (infra/deploys/release.py, the app deploy alone), and carried by
   the whole deploy (site.py, every other part of the host checked too). The artifact is built
   and preflighted before the clock starts (a `--dry` run of the same deploy), so the time is
   the release as the host sees it: facts, upload, install, migrate, cutover, health check.
2. Steady-state throughput of GET /healthz and of a prediction through nginx with TLS, each as
   a ratio to the same request sent straight to Gunicorn's unix socket. Both paths are driven
   on the host by the same client (bench/loadgen.py, shipped over SSH), so only the path
   differs. Target: at least 70%. Measured twice:
   - "client on the host's cores": the client shares the cores with nginx and Gunicorn, so
     its own TLS work counts against the nginx path too;
   - "client on a core of its own": every process of the host is pinned to the other cores
     (sched_setaffinity, taskset) and the client to the last one, as a remote client leaves
     the server its cores; the server has one core less. Pinning is undone afterwards.
   Each path's CPU per request on the host, by process and without the client's, shows where
   the difference goes. A third path is measured beside them as a reference, not as plinth:
   the same upstream behind a bare nginx server block (plain HTTP on loopback, nothing but
   proxy_pass: no TLS, log, headers or limits), added for the run and removed afterwards. Its
   ratio is what one nginx hop costs on this host before any of plinth's settings.

Uses the rehearsal host named by PLINTH_REHEARSAL_HOST_JSON or PLINTH_REHEARSAL_DIR (as the
tests do); boots one (and removes it afterwards) when there is none.
Run: `.cache/tools/bin/uv run --frozen python bench/bench_release.py [--seconds 10]`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "infra"))
from conftest import host_json_path, ssh_argv  # noqa: E402  (the host the tests use)
from test_releases import Traffic  # noqa: E402  (the same client the tests use)

from infra.deploys import layout  # noqa: E402

INVENTORY = "infra/inventories/rehearsal.py"
# The reference server block (bare_nginx_hop): a port and a file nothing of plinth's uses.
BARE_HOP_PORT = 8081
BARE_HOP_SITE = "/etc/nginx/sites-enabled/zz-bench-bare-hop"
RELEASE_ENTRY, SITE_ENTRY = "infra/deploys/release.py", "infra/deploys/site.py"
LOADGEN = Path(__file__).with_name("loadgen.py")
PREDICTION = {
    "inputs": [
        {
            "sepal_length_cm": 5.1,
            "sepal_width_cm": 3.5,
            "petal_length_cm": 1.4,
            "petal_width_cm": 0.2,
        }
    ]
}


class TimedTraffic(Traffic):
    """Traffic that also records each request's latency (request sent to body read)."""

    def __init__(self, rehearsal):
        super().__init__(rehearsal)
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def _connection(self):
        conn = super()._connection()
        request, getresponse = conn.request, conn.getresponse

        def timed(*args, **kwargs):
            conn._started = time.perf_counter()
            return request(*args, **kwargs)

        def timed_response():
            response = getresponse()
            read = response.read

            def timed_read(*args):
                body = read(*args)
                with self._lock:
                    self.latencies.append(time.perf_counter() - conn._started)
                return body

            response.read = timed_read
            return response

        conn.request, conn.getresponse = timed, timed_response
        return conn


def pyinfra(*args: str, entry: str = SITE_ENTRY, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path()), **env}
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", *args, INVENTORY, entry],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
    )


def checked(run: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if run.returncode != 0:
        last = [line for line in run.stderr.splitlines() if line.strip()][-3:]
        raise SystemExit(f"bench: {what} failed: {' | '.join(last)}")
    return run


def release_under_load(rehearsal, entry: str, label: str) -> list[tuple[str, str, str]]:
    revision = f"bench-{int(time.time())}"
    checked(pyinfra("--dry", entry=entry, PLINTH_RELEASE_REVISION=revision), "the build")
    with TimedTraffic(rehearsal) as traffic:
        started = time.monotonic()
        lines = []  # (seconds since start, line) of pyinfra's output, for the phases
        environment = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path())}
        with subprocess.Popen(
            [sys.executable, "-m", "pyinfra", "-y", "-vvv", INVENTORY, entry],
            cwd=REPO,
            env={**environment, "PLINTH_RELEASE_REVISION": revision},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as run:
            for line in run.stdout:
                lines.append((time.monotonic() - started, line.rstrip()))
        seconds = time.monotonic() - started
    output = "\n".join(line for _, line in lines)
    checked(subprocess.CompletedProcess(run.args, run.returncode, "", output), "the release")
    operations_start = next((t for t, line in lines if "Beginning operation run" in line), 0.0)
    cutover = next(
        (line.split("healthy (")[-1].rstrip(")") for _, line in lines
         if "plinth-release: current ->" in line and "healthy (" in line),
        "?",
    )  # fmt: skip
    if traffic.failures:  # say which, beside the count in the table
        print(f"bench: failed requests during the release: {traffic.failures[:5]}")
    latencies = sorted(traffic.latencies) or [0.0]

    def ms(p: float) -> str:
        return f"{latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000:.1f} ms"

    served = set(traffic.revisions)
    return [
        (f"{label}: deploy duration", f"{seconds:.1f} s", "< 20 s"),
        (f"{label}: of which connect, facts, plan", f"{operations_start:.1f} s", ""),
        (f"{label}: of which cutover + health check", cutover, ""),
        (f"{label}: requests during it", str(len(traffic.latencies)), ""),
        (f"{label}: errors", str(len(traffic.failures)), "0"),
        (f"{label}: p50 latency", ms(50), ""),
        (f"{label}: p99 latency", ms(99), "< 500 ms"),
        (f"{label}: max latency", ms(100), ""),
        (f"{label}: revisions served", ", ".join(sorted(served)), f"the old, then {revision}"),
    ]


def loadgen(rehearsal, target: str, method: str, path: str, body: str, args) -> dict:
    """bench/loadgen.py run on the host as root (through the deploy user's sudo: a deployed
    host refuses root logins), which may connect to Gunicorn's socket."""
    remote = [
        "python3", "-", target, method, path, "--host", args.domain,
        "--connections", str(args.connections), "--seconds", str(args.seconds),
    ]  # fmt: skip
    if args.client_cpu is not None:
        remote = ["taskset", "-c", str(args.client_cpu), *remote]
    if body:
        remote += ["--body", body]
    run = subprocess.run(
        ssh_argv(rehearsal, shlex.join(remote)),
        stdin=LOADGEN.open("rb"),
        capture_output=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"bench: loadgen on the host failed: {run.stderr.decode()[-500:]}")
    return json.loads(run.stdout)


def cpu_split(runs: list[dict]) -> tuple[float, str]:
    """The host's CPU per request over `runs` (the client's left out): its total, and the
    total spelled out by process, with the client's own after it."""
    names = sorted({name for run in runs for name in run["cpu_us_per_request"]})
    mean = {n: sum(r["cpu_us_per_request"].get(n, 0) for r in runs) / len(runs) for n in names}
    client = sum(r["client_cpu_us_per_request"] for r in runs) / len(runs)
    total = sum(mean.values())
    shown = sorted(((us, name) for name, us in mean.items() if us >= 1), reverse=True)
    parts = " + ".join(f"{name} {us:.0f}" for us, name in shown)
    return total, f"{parts} = {total:.0f} µs (client {client:.0f} µs)"


def spread_text(runs: list[dict]) -> str:
    """How the CPU of each multi-process program was split over its processes, per round
    (e.g. `gunicorn 52/48`): an even split says the connections did not all land on one worker."""
    names = sorted({name for run in runs for name in run.get("cpu_spread_pct", {})})

    def rounds(name: str) -> str:
        return ", ".join("/".join(map(str, r["cpu_spread_pct"].get(name, []))) or "-" for r in runs)

    return "; ".join(f"{name} {rounds(name)}" for name in names) or "one process each"


def pin_every_process(rehearsal, cpus: str) -> None:
    """Every process of the host (threads too, PID 1 included, so what it starts later
    inherits it) allowed on `cpus` only; kernel threads are not the host's and stay as
    they are."""
    pin = f"for p in /proc/[0-9]*; do taskset -a -p -c {cpus} ${{p#/proc/}} >/dev/null 2>&1; done"
    subprocess.run(ssh_argv(rehearsal, pin + "; true"), check=True, capture_output=True)


def host_cores(rehearsal) -> int:
    run = subprocess.run(ssh_argv(rehearsal, "nproc --all"), capture_output=True, text=True)
    return int(run.stdout.strip() or 1)


def throughput_ratios_by_placement(rehearsal, args) -> list[tuple[str, str, str]]:
    """The ratios with the client on the host's cores, then on a core of its own."""
    args.client_cpu = None
    rows = throughput_ratios(rehearsal, args, "client on the host's cores")
    cores = host_cores(rehearsal)
    if cores < 2:
        return [*rows, ("client on a core of its own", "not measured: the host has 1 core", "")]
    args.client_cpu = cores - 1
    pin_every_process(rehearsal, f"0-{cores - 2}")
    try:
        rows += throughput_ratios(rehearsal, args, "client on a core of its own")
    finally:
        pin_every_process(rehearsal, f"0-{cores - 1}")
    return rows


@contextmanager
def bare_nginx_hop(rehearsal):
    """The loadgen target of a server block with nothing but the proxy to plinth's upstream,
    on the host's nginx for as long as the block runs."""
    server = (
        f"server {{ listen 127.0.0.1:{BARE_HOP_PORT}; access_log off; location / {{ "
        f"proxy_pass http://{layout.NGINX_UPSTREAM}; proxy_http_version 1.1; "
        'proxy_set_header Connection ""; } }'
    )
    reload = "nginx -t -q && systemctl reload nginx"
    add = f"printf '%s\\n' {shlex.quote(server)} > {BARE_HOP_SITE} && {reload}"
    remove = f"rm -f {BARE_HOP_SITE}; {reload}"
    subprocess.run(ssh_argv(rehearsal, add), check=True, capture_output=True)
    try:
        time.sleep(1)  # the new workers listen
        yield f"tcp:127.0.0.1:{BARE_HOP_PORT}:-"
    finally:
        subprocess.run(ssh_argv(rehearsal, remove), check=True, capture_output=True)


def throughput_ratios(rehearsal, args, placement: str) -> list[tuple[str, str, str]]:
    with bare_nginx_hop(rehearsal) as bare:
        return _throughput_ratios(rehearsal, args, placement, bare)


def _throughput_ratios(rehearsal, args, placement, bare) -> list[tuple[str, str, str]]:
    args.domain = rehearsal["domain"]
    via_nginx = f"tls:127.0.0.1:443:{args.domain}"
    direct = f"unix:{layout.SOCKET_PATH}"
    requests = {
        "GET /healthz": ("GET", "/healthz", ""),
        "POST predict": ("POST", "/v1/models/iris/predict", json.dumps(PREDICTION)),
    }
    rows = []
    for request, (method, path, body) in requests.items():
        name = f"{request} ({placement})"
        results = {via_nginx: [], direct: [], bare: []}
        for round_ in range(args.rounds):  # A B C C B A ...: a drift in load hits all alike
            for target in (direct, via_nginx, bare)[:: 1 if round_ % 2 == 0 else -1]:
                results[target].append(loadgen(rehearsal, target, method, path, body, args))
        rps = {target: sum(r["rps"] for r in runs) / len(runs) for target, runs in results.items()}
        errors = {target: sum(r["errors"] for r in runs) for target, runs in results.items()}
        p99 = {target: max(r["p99_ms"] for r in runs) for target, runs in results.items()}
        cpu = {target: cpu_split(runs) for target, runs in results.items()}
        ratio = rps[via_nginx] / rps[direct] if rps[direct] else 0.0
        bare_ratio = rps[bare] / rps[direct] if rps[direct] else 0.0
        # Each round's pair (run back to back): how far a single measurement strays.
        pairs = sorted(
            n["rps"] / d["rps"]
            for n, d in zip(results[via_nginx], results[direct], strict=True)
            if d["rps"]
        )
        for target, runs in results.items():
            if errors[target]:  # say why, in the table
                first = next(r["first_error"] for r in runs if r.get("first_error") or r["errors"])
                print(f"bench: {name} via {target}: {errors[target]} errors, e.g. {first}")
        rows += [
            (f"{name}: unix socket", f"{rps[direct]:.0f} req/s (p99 {p99[direct]:.1f} ms, "
             f"{errors[direct]} errors)", ""),
            (f"{name}: nginx + TLS", f"{rps[via_nginx]:.0f} req/s (p99 {p99[via_nginx]:.1f} ms, "
             f"{errors[via_nginx]} errors)", ""),
            (f"{name}: ratio nginx+TLS / socket", f"{100 * ratio:.0f}%", ">= 70%"),
            (f"{name}: ratio, each round's pair", ", ".join(f"{100 * r:.0f}%" for r in pairs), ""),
            (f"{name}: reference, bare nginx hop (plain HTTP, proxy_pass only) / socket",
             f"{100 * bare_ratio:.0f}% ({rps[bare]:.0f} req/s; the hop adds "
             f"{cpu[bare][0] - cpu[direct][0]:+.0f} µs of host CPU per request)", ""),
            # Where the difference goes: the host's CPU per request by process, the client's
            # (which shares the host's cores here, as no real client would) apart.
            (f"{name}: host CPU per request, socket", cpu[direct][1], ""),
            (f"{name}: host CPU per request, nginx + TLS", cpu[via_nginx][1], ""),
            (f"{name}: CPU split over a program's processes, socket",
             spread_text(results[direct]), ""),
            (f"{name}: CPU split over a program's processes, nginx + TLS",
             spread_text(results[via_nginx]), ""),
            (f"{name}: host CPU per request, socket / nginx+TLS",
             f"{100 * cpu[direct][0] / cpu[via_nginx][0]:.0f}%", ""),
        ]  # fmt: skip
    return rows


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8, help="per throughput run")
    parser.add_argument("--rounds", type=int, default=4, help="throughput runs per path")
    parser.add_argument("--connections", type=int, default=4, help="throughput clients")
    args = parser.parse_args()
    path = host_json_path()
    booted_here = not path.is_file()
    if booted_here:
        rehearsal_tool = [sys.executable, "-m", "infra.rehearsal"]
        subprocess.run([*rehearsal_tool, "up"], cwd=REPO, check=True)
    try:
        rehearsal = json.loads(path.read_text())
        load_before = load()
        checked(pyinfra(), "the deploy before the benchmark")  # a fresh host converges here
        rows = [
            *release_under_load(rehearsal, RELEASE_ENTRY, "release (release.py)"),
            *release_under_load(rehearsal, SITE_ENTRY, "release in the whole deploy (site.py)"),
            *throughput_ratios_by_placement(rehearsal, args),
        ]
        load_after = load()
    finally:
        if booted_here and not os.environ.get("PLINTH_KEEP_REHEARSAL"):
            subprocess.run([*rehearsal_tool, "down"], cwd=REPO, check=True)
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print(f"\nrelease benchmark ({rehearsal['release']}; load average {load_before} before, "
          f"{load_after} after)\n")  # fmt: skip
    print(f"| {'what':<{width}} | {'value':<{value_width}} | target |")
    print(f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|--------|")
    for what, value, target in rows:
        print(f"| {what:<{width}} | {value:<{value_width}} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
