"""Benchmark of the rehearsal host: rootfs build (cold, cached), boot to SSH, first deploy,
no-op re-deploy and app-only re-deploy, in seconds.

Run as root: `uv run python bench/bench_rehearsal.py [--release trixie] [--skip-cold]`.
It boots its own rehearsal (name plinth-bench, subnet 10.213.251.0/24, temporary state and, for
the cold build, a temporary cache), so it runs beside a live rehearsal and leaves nothing.

Rows come from the functions in BENCHMARKS, each returning rows for the table. Not a test: it
prints figures, it does not judge them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "plinth-bench"
SUBNET = "10.213.251.0/24"
SITE_DEPLOY = ("infra/inventories/rehearsal.py", "infra/deploys/site.py")


@dataclass
class Row:
    what: str
    seconds: float
    note: str = ""


@dataclass
class Context:
    release: str
    state_dir: Path
    cold_cache: Path | None  # None: use the normal cache (--skip-cold)
    rows: list[Row] = field(default_factory=list)

    def env(self, cache: Path | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLINTH_REHEARSAL_")}
        env.update(
            PLINTH_REHEARSAL_DIR=str(self.state_dir),
            PLINTH_REHEARSAL_NAME=NAME,
            PLINTH_REHEARSAL_SUBNET=SUBNET,
        )
        if cache is not None:
            env["PLINTH_CACHE_DIR"] = str(cache)
        return env

    def rehearsal(self, *args: str, cache: Path | None) -> float:
        """Run the CLI; return its wall time. A failure stops the benchmark with its line."""
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "infra.rehearsal", *args],
            cwd=REPO,
            env=self.env(cache),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"bench: `rehearsal {' '.join(args)}` failed: {result.stderr.strip()}")
        return time.monotonic() - started

    def timings(self) -> dict[str, float]:
        return json.loads((self.state_dir / "state.json").read_text()).get("timings", {})


def bench_cold(ctx: Context) -> list[Row]:
    """Build the rootfs with an empty cache, boot, take it down."""
    if ctx.cold_cache is None:
        return []
    total = ctx.rehearsal("up", "--release", ctx.release, cache=ctx.cold_cache)
    t = ctx.timings()
    ctx.rehearsal("down", cache=ctx.cold_cache)
    return [
        Row("rootfs build, cold (mmdebstrap)", t["rootfs_build"], "empty cache"),
        Row("up, cold cache (total)", total),
    ]


def bench_cached(ctx: Context) -> list[Row]:
    """Boot from the cached tarball; then the no-op re-run `make rehearse` does."""
    cache = ctx.cold_cache
    total = ctx.rehearsal("up", "--release", ctx.release, cache=cache)
    t = ctx.timings()
    again = ctx.rehearsal("up", cache=cache)
    return [
        Row("rootfs cached (unpack + personalize)", t["unpack"]),
        Row("boot to SSH", t["boot_to_ssh"], "nspawn start to first SSH answer"),
        Row("boot to systemd running", t["boot_to_running"]),
        Row("up, cached (total)", total, "incl. pebble, NAT, host.json"),
        Row("up again on a running host (no-op)", again),
    ]


def _deploy(ctx: Context, **env: str) -> float:
    """`pyinfra -y --json` of site.py against the bench host; its wall time."""
    environment = {
        **ctx.env(ctx.cold_cache),
        "PLINTH_REHEARSAL_HOST_JSON": str(ctx.state_dir / "host.json"),
        **env,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--json", *SITE_DEPLOY],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench: deploy failed: {result.stderr.strip().splitlines()[-1:]}")
    return time.monotonic() - started


def bench_deploys(ctx: Context) -> list[Row]:
    """First deploy of the fresh host, an unchanged re-deploy, then an app-only release."""
    first = _deploy(ctx)
    noop = _deploy(ctx)
    app_only = _deploy(ctx, PLINTH_RELEASE_REVISION=f"bench-{int(time.time())}")
    return [
        Row("first deploy", first, "apt, PostgreSQL, nginx, TLS from pebble, release"),
        Row("no-op re-deploy", noop, f"{100 * noop / first:.0f}% of the first"),
        Row("app-only re-deploy", app_only, "new release: build, upload, cutover, health check"),
    ]


def bench_down(ctx: Context) -> list[Row]:
    return [Row("down", ctx.rehearsal("down", cache=ctx.cold_cache))]


# bench_down last: it removes the host the rows before it use.
BENCHMARKS: list[Callable[[Context], list[Row]]] = [
    bench_cold,
    bench_cached,
    bench_deploys,
    bench_down,
]


def print_table(rows: list[Row], release: str) -> None:
    width = max(len(row.what) for row in rows)
    print(f"\nrehearsal benchmark ({release}, {os.cpu_count()} cores)\n")
    print(f"{'what':<{width}}  {'seconds':>8}  note")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 4}")
    for row in rows:
        print(f"{row.what:<{width}}  {row.seconds:>8.1f}  {row.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="bookworm", choices=("bookworm", "trixie"))
    parser.add_argument(
        "--skip-cold", action="store_true", help="use the normal cache; no cold build"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: must run as root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="plinth-bench-"))
    ctx = Context(
        release=args.release,
        state_dir=work / "state",
        cold_cache=None if args.skip_cold else work / "cache",
    )
    try:
        for benchmark in BENCHMARKS:
            ctx.rows += benchmark(ctx)
    finally:
        ctx.rehearsal("down", cache=ctx.cold_cache)  # idempotent: nothing left if a row failed
        shutil.rmtree(work, ignore_errors=True)
    print_table(ctx.rows, args.release)
    return 0


if __name__ == "__main__":
    sys.exit(main())
