"""Two rehearsal hosts as a split topology (group_data/db.py): the service's host and the
database's, each booted by the rehearsal tool on a subnet of its own with the other's as a
peer (reached without NAT), e.g. for the database's:

    PLINTH_REHEARSAL_DIR=.rehearsal-split-db PLINTH_REHEARSAL_NAME=plinth-split-db \\
    PLINTH_REHEARSAL_SUBNET=10.213.7.0/24 PLINTH_REHEARSAL_PEERS=10.213.6.0/24 \\
        uv run python -m infra.rehearsal up

and the service's with `-app` names and the two subnets swapped. PLINTH_REHEARSAL_APP_DIR and
PLINTH_REHEARSAL_DB_DIR name the two state dirs (defaults as above). What the split needs in
host data follows from the two addresses; the roles' passwords are copied by hand (see
group_data/db.py) between the database host's first deploy and the service host's."""

import os
from pathlib import Path

from infra.deploys.postgres import DB_CONNECTION_DEFAULTS
from infra.rehearsal.inventory import host_data

_REPO = Path(__file__).resolve().parents[2]


def _host_json(role: str) -> Path:
    state_dir = os.environ.get(f"PLINTH_REHEARSAL_{role.upper()}_DIR")
    return Path(state_dir or _REPO / f".rehearsal-split-{role}") / "host.json"


_app = host_data(_host_json("app"), "split rehearsal's app host")
_db = host_data(_host_json("db"), "split rehearsal's db host")
_app_address, _db_address = _app["ssh_hostname"], _db["ssh_hostname"]
_app.update(db_host=_db_address, app_ip_address_allow=[_db_address])
_db.update(
    db_listen_addresses=[_db_address],
    db_client_networks=[f"{_app_address}/32"],
    # PostgreSQL's port only: the database host serves no HTTP. pg_hba.conf admits the app
    # host alone, with its password (scram-sha-256).
    firewall_tcp_ports=[DB_CONNECTION_DEFAULTS["db_port"]],
)

app = [("rehearsal-app", _app)]
db = [("rehearsal-db", _db)]
rehearsal = ["rehearsal-app", "rehearsal-db"]  # group_data/rehearsal.py applies to both
