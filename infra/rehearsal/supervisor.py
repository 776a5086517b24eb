"""Keeps the rehearsal host running across its own reboots: `python -m infra.rehearsal.supervisor`.

A reboot inside `systemd-nspawn --boot` ends nspawn with exit status 133 (systemd's own
systemd-nspawn@.service restarts it on that status: RestartForceExitStatus=133). PID 1 on the
control machine is not systemd, so this small process, started detached by `up`, plays that
part: it runs nspawn, and when nspawn exits for a reboot it starts it again on the same root
filesystem (the tmpfs stays mounted) and re-applies what the new veth needs on this side (the
gateway address; the NAT table again if the interface got another name), then records the new
PIDs in state.json. Any other exit ends the supervisor too. TERM (from `down`) stops the
container and then the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.rehearsal import container, network, proc
from infra.rehearsal.config import REPO_ROOT
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.lock import state_lock
from infra.rehearsal.state import NSPAWN_PID, StateDir

MARKER = "infra.rehearsal.supervisor"
REBOOT_EXIT_STATUS = 133  # systemd-nspawn: the container asked for a reboot
STOP_TIMEOUT = 30.0  # like container.stop: nspawn shuts its systemd down in about 2 s


class _Stop(Exception):
    """TERM/INT/HUP arrived: stop the container and leave."""


def _raise_stop(signum, frame) -> None:
    raise _Stop


def argv(state_dir: Path, rootfs: Path, name: str) -> list[str]:
    return [sys.executable, "-m", MARKER, str(state_dir), str(rootfs), name]


def start(state_dir: Path, rootfs: Path, name: str, log: Path) -> int:
    """Start the supervisor detached (it starts nspawn at once); its PID."""
    (state_dir / NSPAWN_PID).unlink(missing_ok=True)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{path}" if path else str(REPO_ROOT)}
    return proc.spawn_detached(argv(state_dir, rootfs, name), log, env=env)


def wait_for_nspawn(state_dir: Path, pid: int, log: Path, timeout: float = 15.0) -> int:
    """The PID of the nspawn the supervisor started."""
    sd = StateDir(state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nspawn_pid = sd.read_pid(NSPAWN_PID)
        if nspawn_pid and container.is_running(nspawn_pid):
            return nspawn_pid
        if not is_running(pid):
            raise RehearsalError(f"systemd-nspawn exited early: {container.last_log_line(log)}")
        time.sleep(0.05)
    raise RehearsalError(f"systemd-nspawn did not start within {timeout:g}s")


def is_running(pid: int | None) -> bool:
    return proc.is_running(pid, MARKER)


def stop(pid: int | None) -> None:
    """TERM: the supervisor stops its container first, then exits."""
    proc.stop(pid, MARKER, timeout=STOP_TIMEOUT + 10)


def supervise(state_dir: Path, rootfs: Path, name: str) -> int:
    sd = StateDir(state_dir)
    log = sd / "nspawn.log"
    child: subprocess.Popen | None = None
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        reboots = 0
        while True:
            # stdout/stderr are inherited: the boot console goes on to nspawn.log.
            child = subprocess.Popen(container.nspawn_argv(rootfs, name), stdin=subprocess.DEVNULL)
            sd.write_pid(NSPAWN_PID, child.pid)
            if reboots:
                _reattach(sd, child.pid, log, reboots)
            status = child.wait()
            if status != REBOOT_EXIT_STATUS:
                proc.say(f"systemd-nspawn exited with status {status}: not restarting it")
                return 0 if status == 0 else 1
            reboots += 1
            proc.say(f"the host rebooted (reboot {reboots}): starting it again")
    except _Stop:
        _stop_child(child)
        return 0
    except RehearsalError as failure:
        proc.say(f"error: {failure}; stopping the host")
        _stop_child(child)
        return 1


def _reattach(sd: StateDir, nspawn_pid: int, log: Path, reboots: int) -> None:
    """Host-side setup for a new nspawn run, then the record `down` and `status` read."""
    state = sd.load() or {}
    init_pid, iface = container.wait_for_network(nspawn_pid, log)
    network.configure_gateway(iface, state["gateway"], int(state["subnet"].split("/")[1]))
    table = state.get("nft_table")
    if table and (iface != state.get("iface") or not network.nft_table_exists(table)):
        # The rules name the interface: remake them for the new one.
        network.delete_nat(table)
        network.add_nat(table, state["subnet"], iface, state.get("peers", []))
    record = {
        "nspawn_pid": nspawn_pid,
        "init_pid": init_pid,
        "init_started": proc.start_time(init_pid),
        "iface": iface,
        "reboots": reboots,
    }
    # Under the lock, so a concurrent `up` (re-run) does not overwrite it; `down` holding the
    # lock stops us anyway (TERM interrupts the wait).
    with state_lock(sd.path, timeout=3600, command="supervisor"):
        sd.update(**record)


def _stop_child(child: subprocess.Popen | None) -> None:
    """TERM nspawn (an orderly shutdown of the container), KILL it after STOP_TIMEOUT, and if
    its container outlived it, end that too."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a second TERM must not cut the stop short
    if child is None or child.poll() is not None:
        return
    init_pid = container.init_pid(child.pid)
    started = proc.start_time(init_pid) if init_pid else None
    child.terminate()
    try:
        child.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    container.kill_orphan(init_pid, started)


def main() -> int:
    if len(sys.argv) != 4:
        print("usage: python -m infra.rehearsal.supervisor STATE_DIR ROOTFS NAME", file=sys.stderr)
        return 2
    return supervise(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])


if __name__ == "__main__":
    sys.exit(main())
