"""Running host tools and managing the detached processes (nspawn, pebble) by PID.

Commands are argument lists, never shell strings. Detached processes outlive the CLI, so later
commands find them by PID file; before signalling a PID we check its command line still is the
process we started (PIDs get reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from infra.rehearsal.errors import RehearsalError

# Popen objects of children started by this very process: reaped on stop so no zombie
# pretends to be alive during a rollback.
_children: dict[int, subprocess.Popen] = {}


def say(message: str) -> None:
    """Progress goes to stdout; stderr is kept for the one-line error."""
    print(f"rehearsal: {message}", flush=True)


def warn(message: str) -> None:
    print(f"rehearsal: warning: {message}", flush=True)


def run(
    argv: Sequence[str],
    *,
    what: str | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float | None = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise RehearsalError(f"host tool {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise RehearsalError(f"{what or argv[0]} timed out after {timeout:g}s") from None
    if check and result.returncode != 0:
        raise RehearsalError(f"{what or ' '.join(argv[:3])} failed: {last_line(result)}")
    return result


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    for stream in (result.stderr, result.stdout):
        lines = [line for line in (stream or "").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return f"exit status {result.returncode}"


def spawn_detached(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running process in its own session (like `setsid`), output to `log`."""
    with open(log, "ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    _children[child.pid] = child
    return child.pid


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(pid: int | None, marker: str) -> bool:
    """True when `pid` is alive, not a zombie, and is the process we mean: its command line
    contains `marker`, or, while it is exiting (the kernel has already dropped its command
    line), its name is the marker's first 15 characters."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        # Our own child, not yet reaped: its PID cannot belong to anyone else, and its command
        # line is not always readable (an empty read, seen on a busy machine, made a starting
        # supervisor look gone).
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition(" (")[2].rpartition(")")
    if rest.split()[0] == "Z":
        return False
    parts = cmdline(pid)
    if parts:
        return any(marker in part for part in parts)
    return bool(marker) and name == marker[:15]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the PID, its identity.
    None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def stop(pid: int | None, marker: str, timeout: float = 20.0) -> None:
    """TERM, wait up to `timeout`, then KILL; a PID that is no longer ours is left alone."""
    if not is_running(pid, marker):
        _reap(pid)
        return
    assert pid is not None
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid, marker):
            _reap(pid)
            return
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_running(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    _reap(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int | None) -> None:
    child = _children.pop(pid, None) if pid else None
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            warn(f"process {pid} did not exit")
