"""Booting and stopping the rehearsal host with systemd-nspawn.

PID 1 here is not systemd, so nspawn cannot register with machined or create a scope:
`--register=no --keep-unit` in its own session is the combination that boots (see
shared/notes/rehearsal-host.md). `machinectl` therefore cannot see the container; we find it by
the PID of nspawn and of the container's init, and talk to it over SSH. nspawn runs under
`supervisor.py`, which starts it again when the host reboots.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from infra.rehearsal import proc
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.network import link_by_index

NSPAWN_MARKER = "systemd-nspawn"


def nspawn_argv(rootfs: Path, name: str) -> list[str]:
    return [
        "systemd-nspawn",
        "--boot",
        f"--directory={rootfs}",
        f"--machine={name}",
        "--network-veth",
        "--register=no",
        "--keep-unit",
        # Nothing outside the state dir: no journal link into the host's /var/log/journal,
        # no bind of the host's timezone, and our own resolv.conf stays as written.
        "--link-journal=no",
        "--timezone=off",
        "--resolv-conf=off",
        # Boot messages go to nspawn.log; no terminal to attach to.
        "--console=read-only",
    ]


def is_running(pid: int | None) -> bool:
    return proc.is_running(pid, NSPAWN_MARKER)


def stop(pid: int | None) -> None:
    # nspawn turns TERM into an orderly shutdown of the container's systemd (about 2 s).
    proc.stop(pid, NSPAWN_MARKER, timeout=30)


def init_pid(nspawn_pid: int) -> int | None:
    """The container's PID 1 as seen from here: nspawn's descendant in another net namespace."""
    own = os.readlink("/proc/self/ns/net")
    queue = [nspawn_pid]
    while queue:
        pid = queue.pop(0)
        for child in _children(pid):
            try:
                if os.readlink(f"/proc/{child}/ns/net") != own:
                    return child
            except OSError:
                continue
            queue.append(child)
    return None


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def wait_for_network(nspawn_pid: int, log: Path, timeout: float = 15.0) -> tuple[int, str]:
    """The container's init PID and the real name of the host side of its veth. nspawn
    shortens `ve-NAME` to the 15 characters an interface name may have (with a hash), so ask
    the container's host0 which interface is its peer instead of guessing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(nspawn_pid):
            raise RehearsalError(f"systemd-nspawn exited early: {last_log_line(log)}")
        pid = init_pid(nspawn_pid)
        if pid:
            result = proc.run(
                ["nsenter", f"--target={pid}", "--net", "ip", "-j", "link", "show", "host0"],
                check=False,
            )
            if result.returncode == 0:
                links = json.loads(result.stdout or "[]")
                if links and links[0].get("link_index"):
                    name = link_by_index(links[0]["link_index"])
                    if name:
                        return pid, name
        time.sleep(0.1)
    raise RehearsalError(f"the container's network did not appear within {timeout:g}s")


def kill_orphan(init_pid: int | None, started: int | None) -> None:
    """If nspawn died without taking its container along, kill the container's init (SIGKILL
    to a PID namespace's init ends the whole namespace). Identified by PID and start time, so
    a reused PID is never hit."""
    if not init_pid or not started or proc.start_time(init_pid) != started:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(init_pid, signal.SIGKILL)  # systemd as PID 1 would take TERM as "re-exec"
    # A namespace full of processes (and its veth) can take several seconds to go on a busy
    # machine; a new nspawn started before that fails on the same root and interface name.
    deadline = time.monotonic() + 30
    while proc.start_time(init_pid) == started and time.monotonic() < deadline:
        time.sleep(0.1)


def last_log_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][-200:] if lines else "no output"
