"""Gunicorn configuration for ``plinth serve`` (also usable as ``gunicorn -c python:...``).

Importing this module picks the Prometheus multiprocess directory and exports
``PROMETHEUS_MULTIPROC_DIR`` *before* any worker imports prometheus-client, which decides
single- vs multi-process mode once, at its first import.

Sockets: Gunicorn's arbiter itself adopts systemd's sockets when ``LISTEN_FDS`` is set and
``LISTEN_PID`` is its PID (gunicorn/arbiter.py ``start()`` via ``systemd.listen_fds()``);
``bind`` is only used otherwise. ``plinth serve`` runs the arbiter in its own process, so
systemd's ``LISTEN_PID`` matches.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gunicorn import systemd

from service.config import Settings

WORKER_CLASS = "uvicorn_worker.UvicornWorker"


def _choose_metrics_dir() -> tuple[Path, bool]:
    """(directory, whether we created a temporary one that we must remove at exit)."""
    runtime_directory = os.environ.get("RUNTIME_DIRECTORY")
    if runtime_directory:
        # systemd may list several RuntimeDirectory= paths separated by ':'.
        directory = Path(runtime_directory.split(":")[0]) / "metrics"
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory, False
    return Path(tempfile.mkdtemp(prefix="plinth-metrics-")), True


METRICS_DIR, _METRICS_DIR_IS_TEMPORARY = _choose_metrics_dir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)


def on_starting(server: Any) -> None:
    """Master start: files left by a previous run would be summed into our counters. Not in
    a master re-executed by USR2 (a release cutover): the old master's workers still serve
    and count in the same directory (systemd keeps RuntimeDirectory across the re-exec), and
    their counts must go on being summed, or every counter would drop at each release."""
    if "GUNICORN_PID" in os.environ:
        return
    for leftover in METRICS_DIR.glob("*.db"):
        leftover.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (pool in use) must not count any more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(METRICS_DIR))


def on_exit(server: Any) -> None:
    if _METRICS_DIR_IS_TEMPORARY:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)


def pre_exec(server: Any) -> None:
    """USR2 re-exec (a release cutover): run the launcher we were started as (``current``'s
    ``venv/bin/plinth``, whose shebang names the *new* release's interpreter) rather than
    ``sys.executable`` (the old release's venv), and hand systemd's socket over as fd 3."""
    launcher = Path(sys.argv[0])
    if launcher.is_absolute() and os.access(launcher, os.X_OK):
        server.START_CTX[0] = str(launcher)
        server.START_CTX["args"] = [str(launcher), *sys.argv[1:]]
    if server.systemd and len(server.LISTENERS) == 1:
        # Gunicorn dup()ed fd 3 away; a re-exec'd master looks for LISTEN_FDS from fd 3.
        os.dup2(server.LISTENERS[0].fileno(), 3)


def _exit_with_master(master_pid: int) -> None:
    while os.getppid() == master_pid:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)  # graceful: in-flight requests finish


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: leave when the master is gone. Gunicorn's sync workers poll their
    parent, but uvicorn workers never do, so a SIGKILLed master would leave them serving old
    code from the inherited socket wherever systemd cannot kill the whole cgroup (containers,
    KillMode=process). Polled rather than prctl(PR_SET_PDEATHSIG): that signal fires when the
    forking *thread* ends, which dropped live workers during a USR2 release cutover."""
    threading.Thread(
        target=_exit_with_master, args=(worker.ppid,), name="exit-with-master", daemon=True
    ).start()


def post_worker_init(worker: Any) -> None:
    """A worker of a re-exec'd master: once its app has started (the ASGI lifespan startup,
    which uvicorn runs only after this hook, just before it serves), that master becomes
    systemd's main PID, and the deploy then stops the old one. Not here and now: a release
    whose startup fails would have the old master stopped before its own failure showed.
    Needs ``NotifyAccess=all`` in the unit."""
    if "GUNICORN_PID" not in os.environ:
        return
    app = worker.wsgi

    async def announcing_once_started(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_then_announce(message: Any) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                systemd.sd_notify(f"MAINPID={os.getppid()}", worker.log)

        await app(scope, receive, send_then_announce)

    worker.wsgi = announcing_once_started  # what uvicorn serves (uvicorn_worker's _serve)


def logconfig(settings: Settings) -> dict[str, Any]:
    """Gunicorn's own (master) log lines as JSON on stdout, like the application's."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": settings.log_level.upper()},
        "loggers": {
            "gunicorn.error": {
                "handlers": ["stdout"],
                "level": settings.log_level.upper(),
                "propagate": False,
            },
            # The application writes its own access line (route template, request id).
            "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }


def options(settings: Settings) -> dict[str, Any]:
    """Gunicorn settings derived from plinth's settings (re-read on every HUP)."""
    return {
        "bind": [settings.bind],
        "workers": settings.workers,
        "worker_class": WORKER_CLASS,
        "timeout": settings.timeout_seconds,
        "graceful_timeout": settings.graceful_timeout_seconds,
        "keepalive": settings.keepalive_seconds,
        "loglevel": settings.log_level,
        "logconfig_dict": logconfig(settings),
        "accesslog": None,
        "proc_name": "plinth",
        # Gunicorn >= 25.1 opens a control socket by default; plinth is managed by systemd
        # signals only (contract: the control socket is off).
        "control_socket_disable": True,
        "on_starting": on_starting,
        "child_exit": child_exit,
        "on_exit": on_exit,
        "pre_exec": pre_exec,
        "post_worker_init": post_worker_init,
        "post_fork": post_fork,
    }
