"""SSH to the rehearsal host: its key, `.rehearsal/ssh_config`, and waiting for it to come up."""

from __future__ import annotations

import time
from pathlib import Path

from infra.deploys.layout import DEPLOY_USER
from infra.rehearsal import container, proc
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.state import write_file

HOST_ALIAS = "rehearsal"  # the contract: `ssh -F .rehearsal/ssh_config rehearsal`


def generate_key(key: Path, name: str) -> str:
    """A fresh ed25519 key for this rehearsal only; returns the public key line."""
    key.unlink(missing_ok=True)
    key.with_name(key.name + ".pub").unlink(missing_ok=True)
    proc.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(key)],
        what="generating the SSH key",
    )
    return key.with_name(key.name + ".pub").read_text()


def write_config(path: Path, *, address: str, user: str, key: Path) -> None:
    # The host is rebuilt with new host keys every time: no known_hosts, no prompts.
    write_file(
        path,
        f"Host {HOST_ALIAS}\n"
        f"    HostName {address}\n"
        f"    User {user}\n"
        f"    IdentityFile {key}\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n"
        "    ConnectTimeout 5\n"
        "    ServerAliveInterval 15\n",
    )


def run(config: Path, *command: str, timeout: float = 60, check: bool = False):
    """Run a command on the rehearsal host. `command` is passed as ssh arguments, which the
    remote shell joins: callers pass constants only. A deployed host refuses root: then the
    deploy user runs it (docs/contracts.md)."""
    for login in ([], ["-l", DEPLOY_USER]):
        result = proc.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", *login, HOST_ALIAS, "--", *command],
            check=False,
            timeout=timeout,
            what="ssh to the rehearsal host",
        )
        if not (result.returncode == 255 and "Permission denied" in result.stderr):
            break
    if check and result.returncode != 0:
        raise RehearsalError(f"ssh to the rehearsal host failed: {proc.last_line(result)}")
    return result


def system_state(config: Path) -> str | None:
    try:
        result = run(config, "systemctl", "is-system-running", timeout=15)
    except RehearsalError:
        return None
    if result.returncode == 255:  # ssh itself failed: not reachable (yet)
        return None
    return result.stdout.strip() or None


def failed_units(config: Path) -> list[str]:
    result = run(config, "systemctl", "--failed", "--plain", "--no-legend", "--no-pager")
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def wait_until_up(config: Path, nspawn_pid: int, log: Path, timeout: float) -> tuple[str, float]:
    """Wait until SSH answers and systemd finished booting. Returns (state, seconds to SSH)."""
    started = time.monotonic()
    deadline = started + timeout
    ssh_after: float | None = None
    state: str | None = None
    while time.monotonic() < deadline:
        if not container.is_running(nspawn_pid):
            raise RehearsalError(
                f"the rehearsal host stopped while booting: {container.last_log_line(log)}"
            )
        state = system_state(config)
        if state is not None and ssh_after is None:
            ssh_after = time.monotonic() - started
        if state in ("running", "degraded"):
            return state, ssh_after or 0.0
        if state in ("maintenance", "stopping", "offline"):
            raise RehearsalError(f"the rehearsal host's systemd reports {state!r}")
        time.sleep(0.2)
    if ssh_after is None:
        raise RehearsalError(f"SSH to the rehearsal host did not answer within {timeout:g}s")
    raise RehearsalError(f"systemd in the rehearsal host still {state!r} after {timeout:g}s")
