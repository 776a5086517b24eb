"""The rehearsal host the rehearsal tool boots (`python -m infra.rehearsal up`), read from its
host.json; PLINTH_REHEARSAL_HOST_JSON points elsewhere (default `.rehearsal/host.json`)."""

import json
import os
from pathlib import Path

from pyinfra.api.exceptions import InventoryError

from infra.deploys import layout
from infra.deploys.login import LoginError, login_user

_REPO = Path(__file__).resolve().parents[2]
# The rehearsal tool writes host.json into its state dir (PLINTH_REHEARSAL_DIR, default .rehearsal).
_state_dir = Path(os.environ.get("PLINTH_REHEARSAL_DIR") or _REPO / ".rehearsal")
_path = Path(os.environ.get("PLINTH_REHEARSAL_HOST_JSON") or _state_dir / "host.json")
if not _path.is_file():
    raise InventoryError(f"no rehearsal host: {_path} is missing (run: make rehearse)")
_info = json.loads(_path.read_text())

_data = {
    "ssh_hostname": _info["address"],
    "deploy_user": layout.DEPLOY_USER,
    "ssh_key": _info["ssh_key"],
    "domain": _info["domain"],
    # A throwaway host with a new key each time: never prompt, never remember it.
    "ssh_known_hosts_file": "/dev/null",
    "ssh_strict_host_key_checking": "no",
}
# host.json's ssh_user is the login a fresh host offers (root); the first deploy creates the
# deploy user and turns root login off, so every later one logs in as the deploy user.
try:
    _data["ssh_user"] = login_user(_data, layout.DEPLOY_USER, _info.get("ssh_user", "root"))
except LoginError as error:
    raise InventoryError(f"rehearsal host: {error}") from None
_data["_sudo"] = _data["ssh_user"] != "root"
if _info.get("acme_directory"):
    _data.update(
        tls_mode="acme",
        tls_acme_directory=_info["acme_directory"],
        tls_acme_ca_bundle=_info.get("acme_ca_bundle"),
        tls_acme_root=_info.get("acme_root"),
        tls_acme_email=_info.get("acme_email", "ops@plinth.test"),
    )
else:
    _data["tls_mode"] = "off"

# One host holds both roles. PLINTH_REHEARSAL_ROLES=app (or db) plays one side of a split
# topology (group_data/db.py) on it: the host is then in that group alone, and the deploy
# does that role's part only (the restore's tests use it).
_roles = (os.environ.get("PLINTH_REHEARSAL_ROLES") or "app,db").split(",")
if not _roles or set(_roles) - {"app", "db"}:
    raise InventoryError(f"PLINTH_REHEARSAL_ROLES must be app, db or app,db, not {_roles!r}")
_host = ("rehearsal", _data)
app = [_host] if "app" in _roles else []
db = [_host] if "db" in _roles else []
