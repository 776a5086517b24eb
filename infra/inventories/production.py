"""Production: one host, named by the environment (nothing about it lives in git).

    PLINTH_HOST=203.0.113.10 PLINTH_DOMAIN=api.example.org PLINTH_ACME_EMAIL=ops@example.org \\
        uv run pyinfra infra/inventories/production.py infra/deploys/site.py --dry
"""

import os

from pyinfra.api.exceptions import InventoryError

from infra.deploys import layout
from infra.deploys.login import LoginError, login_user

_missing = [
    n for n in ("PLINTH_HOST", "PLINTH_DOMAIN", "PLINTH_ACME_EMAIL") if not os.environ.get(n)
]
if _missing:
    raise InventoryError(f"production inventory needs {', '.join(_missing)} in the environment")

_data = {
    "ssh_hostname": os.environ["PLINTH_HOST"],
    "domain": os.environ["PLINTH_DOMAIN"],
    "tls_acme_email": os.environ["PLINTH_ACME_EMAIL"],
}
# Logs in as the deploy user once it works, as root on a fresh host (whose first deploy creates
# the deploy user and turns root login off). PLINTH_SSH_USER names another login with sudo
# (e.g. a cloud image's `admin`). The deploy user's name is set here, not in group data: the
# login has to be chosen before any data is read.
_data["deploy_user"] = os.environ.get("PLINTH_DEPLOY_USER") or layout.DEPLOY_USER
try:
    _data["ssh_user"] = os.environ.get("PLINTH_SSH_USER") or login_user(_data, _data["deploy_user"])
except LoginError as error:
    raise InventoryError(f"production host: {error}") from None
_data["_sudo"] = _data["ssh_user"] != "root"

# One host holds both roles; to split them, list the db host under `db` and set db_host.
app = [("production", _data)]
db = ["production"]
