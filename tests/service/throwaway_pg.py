"""A throwaway PostgreSQL server for tests, the benchmark and ``make dev``.

PostgreSQL refuses to run as root, so when we are root the server runs as the Debian
``postgres`` system user, in a fresh temporary directory, on a free loopback port, with a
password-authenticated (scram-sha-256) superuser. Self-contained (stdlib + psycopg) so it
can be run as a script:

    uv run python tests/service/throwaway_pg.py dev    # PostgreSQL + migrations + reloading server
    uv run python tests/service/throwaway_pg.py run -- CMD...   # CMD with PLINTH_DATABASE_URL set
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

SUPERUSER = "plinth"
DEFAULT_DATABASE = "plinth"


def _postgres_bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    for candidate in reversed(candidates):
        if Path(candidate, "postgres").exists():
            return Path(candidate)
    raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    """``start()``/``stop()`` may be repeated (same data, same port): tests stop the server
    under a running service and bring it back."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bin_dir = _postgres_bin_dir()
        self.base_dir = Path(tempfile.mkdtemp(prefix="plinth-pg-"))
        self.data_dir = self.base_dir / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        # Tests trade durability for speed; the benchmark keeps PostgreSQL's defaults.
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self._as_postgres_user = os.geteuid() == 0
        if self._as_postgres_user:
            shutil.chown(self.base_dir, "postgres", "postgres")
        self._initdb()

    def _run_kwargs(self) -> dict[str, object]:
        return (
            {"user": "postgres", "group": "postgres", "extra_groups": []}
            if (self._as_postgres_user)
            else {}
        )

    def _initdb(self) -> None:
        password_file = self.base_dir / "password"
        password_file.write_text(self.password)
        if self._as_postgres_user:
            shutil.chown(password_file, "postgres", "postgres")
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--username", SUPERUSER,
                "--pwfile", str(password_file),
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                "--no-locale",
            ],
            check=True,
            capture_output=True,
            cwd=self.base_dir,
            **self._run_kwargs(),
        )  # fmt: skip
        password_file.unlink()

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def libpq_dsn(self, database: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} "
            f"password={self.password} dbname={database} connect_timeout=2"
        )

    def start(self) -> None:
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"]
        settings += ["-c", f"unix_socket_directories={self.base_dir}"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            settings += ["-c", "full_page_writes=off"]
        self.process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                *settings,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.base_dir / "server.log", "ab"),  # noqa: SIM115 - child owns it
            cwd=self.base_dir,
            **self._run_kwargs(),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.libpq_dsn()).close()
                break
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.base_dir / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from None
                time.sleep(0.1)
        self.create_database(DEFAULT_DATABASE, exist_ok=True)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): existing client connections are cut, like a crash/restart.
        A fast shutdown waits for every backend to end, and once (CI, after a test froze and
        thawed the server under 41 connection attempts) six backends took no notice of it and
        held it until their clients' sockets were closed, 30 s later. So after 10 s the
        immediate shutdown (SIGQUIT), which PostgreSQL ends with SIGKILL to its children: a
        throwaway server must go away whatever state a test left it in."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGQUIT)
                self.process.wait(timeout=30)
        self.process = None

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        with psycopg.connect(self.libpq_dsn(), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists and not exist_ok:
                raise RuntimeError(f"database {name} exists")
            if not exists:
                connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.destroy()


def _dev(arguments: argparse.Namespace) -> int:
    with ThrowawayPostgres() as server:
        environment = {
            **os.environ,
            "PLINTH_DATABASE_URL": server.url(),
            "PLINTH_ENVIRONMENT": "development",
        }
        subprocess.run(["plinth", "migrate"], env=environment, check=True)
        print(f"throwaway PostgreSQL on 127.0.0.1:{server.port}; data in {server.base_dir}")
        command = ["uvicorn", "service.asgi:app", "--reload", "--reload-dir", "service"]
        command += ["--host", arguments.host, "--port", str(arguments.port)]
        try:
            return subprocess.call(command, env=environment)
        except KeyboardInterrupt:
            return 0


def _run(arguments: argparse.Namespace) -> int:
    with ThrowawayPostgres(durable=arguments.durable) as server:
        environment = {**os.environ, "PLINTH_DATABASE_URL": server.url()}
        return subprocess.call(arguments.command, env=environment)


def main() -> int:
    # Turn SIGTERM (make, CI, timeout) into a normal exit so the server is stopped and its
    # temporary directory removed by the context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="action", required=True)
    dev = commands.add_parser("dev", help="PostgreSQL + migrations + auto-reloading service")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    run = commands.add_parser("run", help="run a command with PLINTH_DATABASE_URL set")
    run.add_argument("--durable", action="store_true", help="keep fsync/synchronous_commit on")
    run.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    if arguments.action == "run" and arguments.command[:1] == ["--"]:
        arguments.command = arguments.command[1:]
    return {"dev": _dev, "run": _run}[arguments.action](arguments)


if __name__ == "__main__":
    sys.exit(main())
