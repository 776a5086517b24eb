"""The rehearsal host the rehearsal tool boots (`python -m infra.rehearsal up`), read from its
host.json; PLINTH_REHEARSAL_HOST_JSON points elsewhere (default `.rehearsal/host.json`)."""

import os
from pathlib import Path

from pyinfra.api.exceptions import InventoryError

from infra.rehearsal.inventory import host_data

_REPO = Path(__file__).resolve().parents[2]
# The rehearsal tool writes host.json into its state dir (PLINTH_REHEARSAL_DIR, default .rehearsal).
_state_dir = Path(os.environ.get("PLINTH_REHEARSAL_DIR") or _REPO / ".rehearsal")
_data = host_data(Path(os.environ.get("PLINTH_REHEARSAL_HOST_JSON") or _state_dir / "host.json"))

# One host holds both roles. PLINTH_REHEARSAL_ROLES=app (or db) plays one side of a split
# topology (group_data/db.py) on it: the host is then in that group alone, and the deploy
# does that role's part only (the restore's tests use it; rehearsal_split.py has two hosts).
_roles = (os.environ.get("PLINTH_REHEARSAL_ROLES") or "app,db").split(",")
if not _roles or set(_roles) - {"app", "db"}:
    raise InventoryError(f"PLINTH_REHEARSAL_ROLES must be app, db or app,db, not {_roles!r}")
_host = ("rehearsal", _data)
app = [_host] if "app" in _roles else []
db = [_host] if "db" in _roles else []
