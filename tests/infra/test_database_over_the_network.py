"""The database reached over the network, as an app host of its own reaches it
(infra/inventories/group_data/db.py): PostgreSQL listens on the host's address only and admits
that address alone; the service and its migrations connect there. One host plays both roles.
The deploy's own check of the roles' passwords goes through PostgreSQL's unix socket, so it
holds whatever db_listen_addresses says: a second deploy changes nothing."""

from __future__ import annotations

import json

import pytest

from infra.deploys.postgres import POSTGRES_DEFAULTS
from tests.infra.conftest import run_deploy
from tests.infra.https_client import IRIS, PREDICT_PATH, request

pytestmark = pytest.mark.infra

PORT = POSTGRES_DEFAULTS["db_port"]
SERVICE_ROLE = POSTGRES_DEFAULTS["db_user"]


def network_data(address: str) -> list[str]:
    data = {
        "db_host": address,
        "db_listen_addresses": [address],  # a list, as the other address keys
        "db_client_networks": [f"{address}/{128 if ':' in address else 32}"],
        "app_ip_address_allow": [address],
    }
    return [arg for key, value in data.items() for arg in ("--data", f"{key}={json.dumps(value)}")]


def listening_addresses(host) -> set[str]:
    lines = host.check_output(f"ss -Hltn 'sport = :{PORT}'").splitlines()
    return {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in lines}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_the_service_uses_a_database_reached_over_the_network(host, rehearsal, family):
    """IPv6: the host's loopback (the rehearsal's network is IPv4 only), written bare in
    db_host and bracketed in the service's URL by the deploy."""
    address = rehearsal["address"] if family == "ipv4" else "::1"
    data = network_data(address)
    try:
        run = run_deploy(*data)
        assert run.returncode == 0, run.stderr[-2000:]
        assert listening_addresses(host) == {address}  # not loopback any more
        again = run_deploy(*data)
        assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-2000:]

        status, _, body = request(rehearsal, "GET", "/readyz")
        assert status == 200, body
        status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
        assert status == 200, body
        # The service's own connections come from the host's address, over TCP.
        query = (
            "select distinct client_addr from pg_stat_activity "  # noqa: S608 (ours)
            f"where usename = '{SERVICE_ROLE}'"
        )
        clients = host.check_output(f'runuser -u postgres -- psql -tAc "{query}"').split()
        assert clients == [address], clients
    finally:
        restored = run_deploy()
        assert restored.returncode == 0, restored.stderr[-2000:]
    assert "127.0.0.1" in listening_addresses(host)
    assert request(rehearsal, "GET", "/readyz")[0] == 200
