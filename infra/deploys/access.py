"""Logins: the deploy user (key only, passwordless sudo) and sshd's policy (no root, no
password, Lynis' recommendations), without ever locking the deploy out.

Why site.py does this itself rather than a separate bootstrap deploy: the inventories pick the
login (infra/deploys/login.py: the deploy user once it works, root on a fresh host), so the
same one command converges a fresh host and a deployed one. On the run that logs in as root,
the deploy user is created, then proven from the control machine (key login + `sudo -n`), and
only then is root login turned off; a run that logs in as the deploy user has proven it by
connecting. Either way root login goes off in the run that made the user, and the next run,
as the deploy user, changes nothing."""

from __future__ import annotations

import itertools
import shlex
import subprocess
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import DeployError, FactBase, deploy, operation
from pyinfra.facts.files import File, Sha1File
from pyinfra.facts.server import Users
from pyinfra.operations import apt, python, server, systemd

from infra.deploys import layout
from infra.deploys.accounts import account
from infra.deploys.hostops import applied, reload_pending, sha1_of, validated_file
from infra.deploys.login import LoginError, prove_deploy_login
from infra.deploys.templating import render

ACCESS_DEFAULTS = {
    # The user every deploy but a host's first logs in as; sudo without a password.
    "deploy_user": layout.DEPLOY_USER,
    # Public keys (lines) that may log in as deploy_user; exactly these when set. Empty: the
    # deploy user starts with the keys root has (those that let the first deploy in).
    "deploy_authorized_keys": [],
    # sshd: authentication attempts per connection (an agent offers its keys one by one).
    "ssh_max_auth_tries": 3,
    # sshd: sessions per connection; pyinfra and multiplexed ssh (testinfra) open a few.
    "ssh_max_sessions": 4,
    # sshd: seconds between checks that a silent client is still there (2 misses: dropped).
    "ssh_client_alive_interval": 300,
}
# sshd's numbers above; validate.py checks their range (`sshd -t` takes a 0 that lets no one in).
SSHD_NUMBERS = ("ssh_max_auth_tries", "ssh_max_sessions", "ssh_client_alive_interval")
# What login.py needs to log in the way this run did.
_LOGIN_KEYS = (
    "ssh_hostname",
    "ssh_port",
    "ssh_key",
    "ssh_config_file",
    "ssh_known_hosts_file",
    "ssh_strict_host_key_checking",
)


@deploy("Logins: deploy user and sshd", data_defaults=ACCESS_DEFAULTS)
def access() -> None:
    data = host.data
    user = str(data.deploy_user)
    if user == "root":
        raise DeployError("deploy_user must not be root (root login is turned off)")
    home = f"/home/{user}"
    apt.packages(name="sudo and sshd", packages=["sudo", "openssh-server"], no_recommends=True)
    account(  # noqa: S604 (a login shell, not subprocess shell=True)
        name=f"Deploy user {user}", user=user, home=home, shell="/bin/bash", create_home=True
    )
    # Key logins still pass PAM's password ageing: an "expired" password would lock the deploy
    # user out (and root login is off), so its password, which it does not have, never expires.
    password_never_expires(user=user, name=f"{user}'s (unset) password never expires")
    keys = authorized_key_lines(data.deploy_authorized_keys)
    if keys:
        _keeps_this_login(data, user, keys)
        server.user_authorized_keys(
            name=f"{user}'s authorized keys (from data)",
            user=user,
            public_keys=keys,
            delete_keys=True,
            authorized_key_directory=f"{home}/.ssh",
        )
    else:
        login = str(data.get("ssh_user") or "root")
        keys_from_login(
            user=user, home=home, login=login, name=f"{user}'s authorized keys ({login}'s, once)"
        )
    validated_file(
        name=f"sudo: {user} without a password (visudo-checked)",
        path=layout.SUDOERS_DROPIN,
        content=render("sudo/plinth-deploy.j2", deploy_user=user),
        check="visudo -cq -f {path}",
        mode="440",
    )

    policy = render(
        "ssh/sshd-plinth.conf.j2",
        deploy_user=user,
        **{key: data.get(key) for key in SSHD_NUMBERS},  # whole numbers: validate.py
    )
    policy_changes = host.get_fact(Sha1File, path=layout.SSHD_DROPIN) != sha1_of(policy)
    if policy_changes and data.get("ssh_user") != user:
        # This run did not log in as the deploy user: prove it can before root login goes.
        python.call(
            name=f"{user} logs in with its key and sudo works (from the control machine)",
            function=_prove_login,
            login_data={key: data.get(key) for key in _LOGIN_KEYS},
            user=user,
        )
    sshd = validated_file(
        name="sshd: keys only, no root login (sshd -t checked)",
        path=layout.SSHD_DROPIN,
        content=policy,
        # The candidate first, then the whole configuration: its values win, as they will.
        check=(
            "printf 'Include %s\\nInclude /etc/ssh/sshd_config\\n' {path} "
            "| /usr/sbin/sshd -t -f /dev/stdin"
        ),
    )
    # A reload keeps every open session, this deploy's own included.
    pending = reload_pending("sshd", policy)
    systemd.service(
        name="Reload sshd", service="ssh", reloaded=True, _if=lambda: pending or sshd.did_change()
    )
    applied(name="sshd's policy in effect (recorded)", key="sshd", content=policy)


def authorized_key_lines(entries) -> list[str]:
    """deploy_authorized_keys as the key lines to install: each entry a key line (options
    allowed), or a file of them on this machine (`~` expanded). Read here, not by pyinfra: it
    opens a path only as written, and took "~/.ssh/id.pub" for a key, which then was the
    deploy user's only one. Anything else is refused in one line, before any change."""
    entries = entries or []
    entries = [entries] if isinstance(entries, str) else entries
    lines = []
    for entry in (str(entry).strip() for entry in entries):
        if not entry:
            continue
        if _key_blob(entry) is not None:
            lines.append(entry)
            continue
        path = Path(entry).expanduser()
        try:
            found = [line.strip() for line in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError, ValueError):
            found = []
        found = [line for line in found if line and not line.startswith("#")]
        if not found or any(_key_blob(line) is None for line in found):
            raise DeployError(
                f"deploy_authorized_keys entry {entry!r} is neither a public key line "
                "(ssh-ed25519 AAAA...) nor a readable file of them on this machine"
            )
        lines += found
    return lines


def _keeps_this_login(data, user: str, keys: list[str]) -> None:
    """Refuses (one line, before any change) a key list that leaves out the key this run logs
    in as `user` with: the keys are replaced, root login is off, so the next run could not
    log in at all. Checked when the run's key file is known (ssh_key); with an agent or an
    ssh config the key is not known here."""
    if data.get("ssh_user") != user or not data.get("ssh_key"):
        return
    key_file = Path(str(data.ssh_key)).expanduser()
    public = key_file.with_name(key_file.name + ".pub")
    if public.is_file():
        line = public.read_text()
    else:  # the public half from the private key (fails, harmlessly, on a passphrase)
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-P", "", "-f", str(key_file)], capture_output=True, text=True
        )
        line = derived.stdout if derived.returncode == 0 else ""
    login_key = _key_blob(line)
    listed = [_key_blob(line) for line in keys]  # key lines (authorized_key_lines)
    if login_key and login_key not in listed:
        raise DeployError(
            f"deploy_authorized_keys leaves out the key this deploy logs in with ({key_file}): "
            "root login is off, so the next deploy could not log in; add its public key"
        )


def _key_blob(line: str) -> str | None:
    """The base64 key of an authorized_keys line, after any options (`from="..." ssh-ed25519
    AAAA... comment`): the token that follows the key type."""
    tokens = line.split()
    for kind, blob in itertools.pairwise(tokens):
        if kind.startswith(("ssh-", "ecdsa-", "sk-")):
            return blob
    return None


def _prove_login(state, host, login_data: dict, user: str) -> bool:
    """python.call callback: False (the operation fails, root login stays on) with one line."""
    try:
        prove_deploy_login(login_data, user)
    except LoginError as error:
        host.log_styled(str(error), fg="red", log_func=logger.error)
        return False
    return True


@operation()
def keys_from_login(user: str, home: str, login: str):
    """The deploy user gets the keys of the login this run uses (root on a fresh VPS, or
    PLINTH_SSH_USER's) once, while it has none: whoever deployed can log in as the deploy
    user. The login's own keys, not root's: on a cloud image (cloud-init's disable_root) root's
    carry a `command="echo Please login as admin..."` that would refuse every login. Left alone
    afterwards."""
    target = f"{home}/.ssh/authorized_keys"
    if host.get_fact(File, path=target):
        host.noop(f"{target} exists")
        return
    login_home = (host.get_fact(Users).get(login) or {}).get("home")
    source = f"{login_home}/.ssh/authorized_keys"
    if not login_home or not host.get_fact(File, path=source):
        raise DeployError(
            f"{user} has no authorized_keys and the login {login} has none to give: set "
            "deploy_authorized_keys (your public keys) in group data"
        )
    u, h, t = shlex.quote(user), shlex.quote(home), shlex.quote(target)
    yield (
        f"install -d -m 700 -o {u} -g {u} {h}/.ssh && "
        f"install -m 600 -o {u} -g {u} {shlex.quote(source)} {t}"
    )


class PasswordMaxDays(FactBase):
    """/etc/shadow's maximum password age of `user`: "" when none, "absent" with no user."""

    def command(self, user):
        u = shlex.quote(user)
        return f'if e=$(getent shadow {u}); then echo "$e" | cut -d: -f5; else echo absent; fi'

    def process(self, output):
        return "".join(output).strip()


@operation()
def password_never_expires(user: str):
    """No maximum password age for `user` (made earlier in this run when it is absent)."""
    if host.get_fact(PasswordMaxDays, user=user) in ("", "-1"):
        host.noop(f"{user}'s password never expires")
        return
    yield f"chage --maxdays -1 {shlex.quote(user)}"
