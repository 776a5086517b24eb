"""Which user a deploy logs in as, and proof that a login works, tried with the control
machine's OpenSSH client and the same ssh_* data pyinfra connects with.

A fresh host lets only root in (with a key). The first deploy logs in as root, creates the
deploy user, proves from here that it logs in with its key and runs `sudo -n`, and only then
turns root and password login off; every later deploy logs in as the deploy user. The
inventories call `login_user` so that one command (`make deploy-production`, `make rehearse`)
works on a fresh host and on a deployed one alike."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

BOOTSTRAP_USER = "root"  # the only login a fresh VPS (and a fresh rehearsal host) offers
CONNECT_TIMEOUT_SECONDS = 10


class LoginError(Exception):
    """No usable login; the message is the one line the user sees."""


def ssh_argv(data: Mapping, user: str, *command: str) -> list[str]:
    """`ssh` as `user` to the host that `data` (pyinfra's ssh_* keys) describes."""
    strict = data.get("ssh_strict_host_key_checking") or "accept-new"  # pyinfra's default
    argv = [
        "ssh",
        *("-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_SECONDS}"),
        *("-o", f"StrictHostKeyChecking={strict}"),
        *("-l", user),
    ]
    if data.get("ssh_port"):
        # Only when the data names one: `-p` would override a `Port` of ~/.ssh/config, which
        # pyinfra honours (over ssh_port, even), and the check would knock on another port.
        argv += ["-p", str(data["ssh_port"])]
    if data.get("ssh_config_file"):
        argv[1:1] = ["-F", str(data["ssh_config_file"])]
    if data.get("ssh_known_hosts_file"):
        argv += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if data.get("ssh_key"):
        # Only this key: sshd allows few attempts (MaxAuthTries), an agent may hold many keys.
        argv += ["-i", str(data["ssh_key"]), "-o", "IdentitiesOnly=yes"]
    return [*argv, str(data["ssh_hostname"]), "--", *command]


def try_login(data: Mapping, user: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ssh_argv(data, user, *(command or ("true",))),
        capture_output=True,
        text=True,
        timeout=CONNECT_TIMEOUT_SECONDS * 3,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _denied(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 255 and "Permission denied" in result.stderr


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"ssh exited {result.returncode}"


def login_user(data: Mapping, deploy_user: str, fallback: str = BOOTSTRAP_USER) -> str:
    """`deploy_user` once it logs in; `fallback` (root) on a host that refuses it but lets
    root in (a fresh one). Raises LoginError when neither can, or the host is unreachable."""
    host = data["ssh_hostname"]
    try:
        deploy = try_login(data, deploy_user)
        if deploy.returncode == 0:
            return deploy_user
        if not _denied(deploy):
            raise LoginError(f"cannot reach {host} over SSH: {_last_line(deploy)}")
        first = try_login(data, fallback)
    except subprocess.TimeoutExpired:
        raise LoginError(f"cannot reach {host} over SSH: no answer") from None
    if first.returncode == 0:
        return fallback
    raise LoginError(
        f"neither {deploy_user} nor {fallback} can log in to {host} with this key "
        f"({_last_line(deploy)})"
    )


def prove_deploy_login(data: Mapping, deploy_user: str) -> None:
    """Raise unless `deploy_user` logs in with its key and runs `sudo -n` (no password)."""
    result = try_login(data, deploy_user, "sudo", "-n", "true")
    if result.returncode != 0:
        raise LoginError(
            f"the deploy user {deploy_user} cannot log in and sudo ({_last_line(result)}): "
            "root login stays on"
        )
