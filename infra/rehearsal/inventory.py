"""A rehearsal host as pyinfra host data, read from the host.json the tool writes into its
state dir: the inventories (infra/inventories/rehearsal*.py) call `host_data`."""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra.api.exceptions import InventoryError

from infra.deploys import layout
from infra.deploys.login import LoginError, login_user


def host_data(path: Path, label: str = "rehearsal host") -> dict:
    """The connection and TLS data of the host `path` (a host.json) describes. host.json's
    ssh_user is the login a fresh host offers (root); the first deploy creates the deploy user
    and turns root login off, so every later one logs in as the deploy user."""
    if not path.is_file():
        raise InventoryError(f"no {label}: {path} is missing (run: make rehearse)")
    info = json.loads(path.read_text())
    data = {
        "ssh_hostname": info["address"],
        "deploy_user": layout.DEPLOY_USER,
        "ssh_key": info["ssh_key"],
        "domain": info["domain"],
        # A throwaway host with a new key each time: never prompt, never remember it.
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
    }
    try:
        data["ssh_user"] = login_user(data, layout.DEPLOY_USER, info.get("ssh_user", "root"))
    except LoginError as error:
        raise InventoryError(f"{label}: {error}") from None
    data["_sudo"] = data["ssh_user"] != "root"
    if info.get("acme_directory"):
        data.update(
            tls_mode="acme",
            tls_acme_directory=info["acme_directory"],
            tls_acme_ca_bundle=info.get("acme_ca_bundle"),
            tls_acme_root=info.get("acme_root"),
            tls_acme_email=info.get("acme_email", "ops@plinth.test"),
        )
    else:
        data["tls_mode"] = "off"
    return data
