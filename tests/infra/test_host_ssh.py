"""Logins and updates (issue 6): root and passwords cannot log in, the deploy user can (key,
sudo without a password), sshd runs the hardened settings, a bad sshd setting never reaches
sshd, a re-deploy logs in as the deploy user and changes none of it, the deploy installs the
security updates pending, and Debian's unattended-upgrades installs them daily after it."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from conftest import login_user

from infra.deploys import layout
from infra.deploys.updates import SecurityUpgrades

pytestmark = pytest.mark.infra

# What `sshd -T` must report (lower-case keys, as it prints them).
SSHD_EFFECTIVE = {
    "permitrootlogin": "no",
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "pubkeyauthentication": "yes",
    "authenticationmethods": "publickey",
    "permitemptypasswords": "no",
    "allowtcpforwarding": "no",
    "allowagentforwarding": "no",
    "x11forwarding": "no",
    "clientalivecountmax": "2",
    "loglevel": "VERBOSE",
    "maxauthtries": "3",
    "maxsessions": "4",
    "tcpkeepalive": "no",
    "compression": "no",
    "port": "22",
}
ACCESS_OPERATIONS = ("Logins: deploy user and sshd |", "Security updates |")


def _ssh(rehearsal: dict, user: str, *command: str) -> subprocess.CompletedProcess:
    options = ["IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=no"]
    options += ["UserKnownHostsFile=/dev/null", "ConnectTimeout=10"]
    return subprocess.run(
        [
            *("ssh", "-i", str(rehearsal["ssh_key"]), *(f"-o{option}" for option in options)),
            *(f"{user}@{rehearsal['address']}", "--", *command),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _offered_methods(address: str, user: str) -> list[str]:
    """The authentication methods sshd offers `user` (the answer to the SSH "none" method)."""
    transport = paramiko.Transport((address, 22))
    try:
        transport.start_client(timeout=10)
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as answer:
            return list(answer.allowed_types)
        return ["none"]  # logged in without any authentication
    finally:
        transport.close()


def _sshd_settings(host) -> dict[str, str]:
    lines = host.check_output("/usr/sbin/sshd -T").splitlines()
    return dict(line.split(" ", 1) for line in lines if " " in line)


def test_root_login_is_refused_even_with_roots_own_key(first_deploy, rehearsal, host):
    result = _ssh(rehearsal, "root", "true")
    assert result.returncode == 255 and "Permission denied" in result.stderr, result.stderr
    if rehearsal.get("ssh_user", "root") == "root":
        # The key is still in root's authorized_keys: refused by policy, not for a wrong key.
        public_key = Path(f"{rehearsal['ssh_key']}.pub").read_text().split()[1]
        assert host.file("/root/.ssh/authorized_keys").contains(public_key)


@pytest.mark.parametrize("who", ["root", "deploy user"])
def test_only_public_keys_are_offered_no_password(first_deploy, rehearsal, who):
    user = "root" if who == "root" else login_user(rehearsal)
    assert _offered_methods(rehearsal["address"], user) == ["publickey"]


def test_the_deploy_user_logs_in_with_its_key_and_sudo_needs_no_password(first_deploy, rehearsal):
    user = login_user(rehearsal)
    result = _ssh(rehearsal, user, "id -un && sudo -n id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [user, "root"]


def test_the_deploy_user_has_no_password_and_a_checked_sudo_rule(first_deploy, rehearsal, host):
    user = login_user(rehearsal)
    if user == layout.DEPLOY_USER:  # made by the deploy (Vagrant's user comes with the box)
        assert host.check_output(f"passwd -S {user}").split()[1] in ("L", "NP")
    rule = host.file(layout.SUDOERS_DROPIN)
    assert (rule.user, rule.group, rule.mode) == ("root", "root", 0o440)
    assert rule.contains(f"^{user} ALL=(ALL:ALL) NOPASSWD: ALL$")
    assert host.run("visudo -c").rc == 0


def test_sshd_runs_the_hardened_settings(first_deploy, host):
    settings = _sshd_settings(host)
    wrong = {k: settings.get(k) for k, v in SSHD_EFFECTIVE.items() if settings.get(k) != v}
    assert wrong == {}, f"sshd -T differs: {wrong}"
    assert int(settings["clientaliveinterval"]) > 0  # else ClientAliveCountMax means nothing
    assert host.service("ssh").is_running


def test_unattended_upgrades_installs_security_updates_daily(first_deploy, host):
    assert host.package("unattended-upgrades").is_installed
    config = host.check_output("apt-config dump")
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert "label=Debian-Security" in config  # Debian's origins for security updates
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled, timer
        assert host.service(timer).is_running, timer


def test_no_security_update_is_left_pending_after_a_deploy(first_deploy, host):
    # Debian publishes security updates any day, so the host's image is behind: the deploy
    # installs them (with fresh package lists) instead of leaving them to the daily timer.
    simulated = host.check_output("apt-get -s -o Debug::NoLocking=1 upgrade").splitlines()
    pending = [
        line for line in simulated if line.startswith("Inst ") and "security" in line.lower()
    ]
    assert pending == []


def test_security_upgrades_are_read_from_apt_s_simulation():
    simulated = [
        "Inst passwd [1:4.17.4-2] (1:4.17.4-2+deb13u1 Debian-Security:13/stable-security [amd64])",
        "Inst tzdata [2025a-1] (2025b-0+deb13u1 Debian:13.2/stable [all])",
        "Conf login.defs (1:4.17.4-2+deb13u1 Debian-Security:13/stable-security [all])",
        # A fix a point release took in names the stable suite first.
        "Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, "
        "Debian-Security:12/oldstable-security [amd64])",
    ]
    assert SecurityUpgrades().process(simulated) == ["libgcrypt20", "passwd"]


def test_a_setting_sshd_rejects_is_never_installed(first_deploy, rehearsal, host, deploy):
    before = host.file(layout.SSHD_DROPIN).sha256sum
    # Past sshd's INT_MAX seconds: in validation's range (it leaves the top to sshd), so the
    # candidate file reaches `sshd -t`, which refuses it.
    run = deploy("--data", "ssh_client_alive_interval=9999999999")
    assert run.returncode != 0
    assert "invalid time value" in run.stderr, run.stderr[-2000:]
    assert host.file(layout.SSHD_DROPIN).sha256sum == before
    assert not host.file(f"{layout.SSHD_DROPIN}.candidate").exists
    assert _sshd_settings(host)["clientaliveinterval"] == "300"
    assert _ssh(rehearsal, login_user(rehearsal), "sudo -n true").returncode == 0


def test_a_redeploy_logs_in_as_the_deploy_user_and_changes_no_login(
    first_deploy, rehearsal, host, deploy
):
    since = host.check_output("date +%s")
    time.sleep(1)
    run = deploy()
    assert run.returncode == 0, run.stderr[-3000:]
    operations = json.loads(run.stdout)["results"]["operations"]
    changed = [op["name"] for op in operations if op["name"].startswith(ACCESS_OPERATIONS)]
    assert changed, "no login or update operation ran"
    changed = [op["name"] for op in operations if op["name"] in changed and op["success"]]
    assert changed == []
    # sshd logs as `sshd` (Debian 12) or `sshd-session` (13); VERBOSE names the key too.
    logins = host.check_output(
        f"journalctl --since @{since} -o cat SYSLOG_IDENTIFIER=sshd "
        "SYSLOG_IDENTIFIER=sshd-session | grep Accepted || true"
    )
    assert f"Accepted publickey for {login_user(rehearsal)} " in logins, logins
    assert "for root " not in logins, logins


def test_keys_that_leave_out_this_deploy_s_own_are_refused(
    first_deploy, rehearsal, host, deploy, tmp_path
):
    """deploy_authorized_keys replaces the deploy user's keys, and root login is off: a list
    without the key this deploy logs in with would lock every later deploy out, so it is
    refused in one line before anything changes. With that key in it, the list is taken."""
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    other_key = other.with_suffix(".pub").read_text().strip()
    keys_file = f"/home/{login_user(rehearsal)}/.ssh/authorized_keys"  # Vagrant's: vagrant
    before = host.file(keys_file).content_string
    refused = deploy("--data", f"deploy_authorized_keys={json.dumps([other_key])}")
    assert refused.returncode != 0
    (line,) = [line for line in refused.stderr.splitlines() if "pyinfra error" in line]
    assert "leaves out the key this deploy logs in with" in line, line
    assert "Starting operation" not in refused.stderr
    assert host.file(keys_file).content_string == before
    # The deploy's own key plus another: taken (exactly these), and the next deploy logs in.
    own = Path(f"{rehearsal['ssh_key']}.pub")
    own_key = own.read_text().strip() if own.is_file() else before.split("\n")[0]
    try:
        # Options before a key do not hide it (no-X11-forwarding: sshd's policy has it anyway).
        with_options = f"no-X11-forwarding {own_key}"
        taken = deploy("--data", f"deploy_authorized_keys={json.dumps([with_options, other_key])}")
        assert taken.returncode == 0, taken.stderr[-2000:]
        assert other_key.split()[1] in host.file(keys_file).content_string
    finally:
        restored = deploy("--data", f"deploy_authorized_keys={json.dumps([own_key])}")
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert other_key.split()[1] not in host.file(keys_file).content_string


def test_a_key_file_named_from_home_is_read_here_and_a_bad_entry_refused(
    first_deploy, rehearsal, host, deploy, tmp_path, monkeypatch
):
    """pyinfra opens a key file only by its path as written: "~/.ssh/....pub" became the
    deploy user's one "key" (its login check had read the file), and every later deploy was
    locked out. The deploy reads such files itself; an entry that is neither a key line nor a
    file of keys is refused in one line, before any change."""
    keys_file = f"/home/{login_user(rehearsal)}/.ssh/authorized_keys"
    before = host.file(keys_file).content_string
    own = Path(f"{rehearsal['ssh_key']}.pub")
    own_key = own.read_text().strip() if own.is_file() else before.split("\n")[0]
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "deploy.pub").write_text(f"# the deploy's key\n{own_key}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    taken = deploy("--data", 'deploy_authorized_keys=["~/.ssh/deploy.pub"]')
    assert taken.returncode == 0, taken.stderr[-2000:]
    installed = host.file(keys_file).content_string
    assert own_key.split()[1] in installed and "~/.ssh" not in installed, installed
    assert _ssh(rehearsal, login_user(rehearsal), "sudo -n true").returncode == 0
    refused = deploy("--data", 'deploy_authorized_keys=["~/.ssh/missing.pub"]')
    assert refused.returncode != 0
    (line,) = [line for line in refused.stderr.splitlines() if "pyinfra error" in line]
    assert "is neither a public key line" in line, line
    assert "Starting operation" not in refused.stderr
    assert host.file(keys_file).content_string == installed


def _until_logins_pass(rehearsal) -> None:
    """A reload re-executes sshd: port 22 is closed for a moment."""
    deadline = time.monotonic() + 10
    while _ssh(rehearsal, login_user(rehearsal), "true").returncode != 0:
        assert time.monotonic() < deadline, "sshd takes no login after its reload"
        time.sleep(0.2)


def test_a_policy_written_but_never_reloaded_is_reloaded_by_the_next_deploy(
    first_deploy, rehearsal, host, deploy
):
    """A run that wrote sshd's policy and stopped before the reload: the file is up to date
    from then on, so the file alone never calls for the reload, and the running sshd would
    keep the old policy (passwords, root login, after a first deploy). The policy in effect
    is recorded when a reload succeeds; the next deploy sees it differs and reloads."""
    wanted = host.file(layout.SSHD_DROPIN).content_string
    older = wanted.replace("AuthenticationMethods publickey", "AuthenticationMethods any")
    older = older.replace("PasswordAuthentication no", "PasswordAuthentication yes")
    assert older != wanted
    stamp = f"{layout.APPLIED_DIR}/sshd"
    user = login_user(rehearsal)

    def put(policy: str, reload: bool) -> None:
        host.check_output(f"printf '%s' {shlex.quote(policy)} > {layout.SSHD_DROPIN}")
        if reload:  # in effect, and recorded so (as a deploy of that policy leaves it)
            host.check_output(
                f"systemctl reload ssh && printf '%s' {shlex.quote(policy)} "
                f"| sha1sum | cut -d' ' -f1 > {stamp}"
            )
            _until_logins_pass(rehearsal)

    try:
        put(older, reload=True)
        put(wanted, reload=False)  # the interrupted run: the new file, no reload
        assert "password" in _offered_methods(rehearsal["address"], user)  # still the older
        run = deploy()
        assert run.returncode == 0, run.stderr[-2000:]
        _until_logins_pass(rehearsal)
        assert _offered_methods(rehearsal["address"], user) == ["publickey"]
    finally:
        put(wanted, reload=True)  # whatever happened: the wanted policy in effect, recorded
    again = deploy()
    assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-2000:]
