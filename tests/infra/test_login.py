"""The login check (infra/deploys/login.py) reaches the host the way pyinfra will: OpenSSH's own
resolution of its arguments and config (`ssh -G`, which connects nowhere), so no host needed."""

from __future__ import annotations

import subprocess

from infra.deploys.login import ssh_argv


def _resolved(data: dict) -> dict[str, list[str]]:
    """OpenSSH's resolved options for the check's command line: each keyword's values."""
    argv = ssh_argv(data, "deploy", "true")
    argv.insert(1, "-G")
    resolved: dict[str, list[str]] = {}
    for line in subprocess.run(
        argv, capture_output=True, text=True, check=True
    ).stdout.splitlines():
        keyword, _, value = line.partition(" ")
        resolved.setdefault(keyword, []).append(value)
    return resolved


def test_the_port_of_the_ssh_config_applies_unless_the_data_names_one(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host 203.0.113.10\n    Port 2222\n")
    data = {"ssh_hostname": "203.0.113.10", "ssh_config_file": config}
    assert _resolved(data)["port"] == ["2222"]  # as pyinfra connects: it reads the same entry
    assert _resolved({**data, "ssh_port": 2200})["port"] == ["2200"]
    assert _resolved({"ssh_hostname": "203.0.113.10"})["port"] == ["22"]


def test_the_check_logs_in_as_the_user_asked_with_only_the_key_given(tmp_path):
    key = tmp_path / "id_ed25519"
    key.touch()  # OpenSSH drops a missing -i file
    data = {"ssh_hostname": "203.0.113.10", "ssh_key": key}
    resolved = _resolved(data)
    assert resolved["user"] == ["deploy"]
    # Only that key is offered: sshd cuts a client off after a few (MaxAuthTries).
    assert resolved["identitiesonly"] == ["yes"]
    assert resolved["identityfile"] == [str(key)]
    assert resolved["batchmode"] == ["yes"]  # never a password prompt
