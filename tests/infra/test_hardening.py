"""Hardening seen from the host and from outside: sandboxed units, the firewall."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.infra.https_client import request

pytestmark = pytest.mark.infra

# Unit -> the highest `systemd-analyze security` exposure allowed (0 safe .. 10).
UNIT_SCORE_LIMITS = {"plinth.service": 1.5, "nginx.service": 5.0, "postgresql@{pg}-main": 5.0}


def _exposure(host, unit: str) -> float:
    output = host.check_output(f"systemd-analyze security --no-pager {unit}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", output)
    assert match, output[-500:]
    return float(match.group(1))


def _pg_version(host) -> str:
    return host.check_output("ls /etc/postgresql | sort -n | tail -n 1")


@pytest.mark.parametrize("unit_pattern", list(UNIT_SCORE_LIMITS))
def test_unit_is_sandboxed_and_running(host, unit_pattern):
    unit = unit_pattern.format(pg=_pg_version(host) if "{pg}" in unit_pattern else "")
    score = _exposure(host, unit)
    print(f"\n{unit}: exposure {score}")
    assert score <= UNIT_SCORE_LIMITS[unit_pattern], f"{unit} scores {score}"
    assert host.service(unit).is_running


def test_sandboxed_services_still_serve(host, rehearsal):
    status, _, body = request(rehearsal, "GET", "/readyz")
    assert status == 200, body  # nginx -> gunicorn -> PostgreSQL, all under their sandboxes
    assert host.run("systemctl reload nginx").rc == 0
    assert host.run("systemctl reload postgresql").rc == 0


def test_gunicorn_listens_on_no_control_socket(host):
    # Gunicorn's own control socket is disabled: the service's processes listen only on the
    # socket systemd hands them.
    listening = host.check_output("ss -Hxlp")
    paths = {line.split()[4] for line in listening.splitlines() if '"plinth"' in line}
    assert paths == {"/run/plinth.sock"}, listening


# -- firewall, probed from the control machine -------------------------------------------------


def _tcp_open(address: str, port: int, timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:  # refused or timed out (dropped)
        return False


def test_firewall_default_deny_inbound(host):
    ruleset = host.check_output("nft list ruleset")
    assert re.search(r"hook input priority filter; policy drop;", ruleset), ruleset
    assert host.service("nftables").is_enabled


@pytest.mark.parametrize("port", [22, 80, 443])
def test_firewall_leaves_service_ports_open(host, rehearsal, port):
    assert _tcp_open(rehearsal["address"], port)


def test_firewall_closes_postgresql_and_any_other_listener(host, rehearsal):
    # A listener on every address the firewall knows nothing about: it must stay unreachable.
    host.run("systemd-run --unit=plinth-fw-probe -p RuntimeMaxSec=60 python3 -m http.server 9999")
    try:
        deadline = time.monotonic() + 10
        while "9999" not in host.check_output("ss -Hltn 'sport = :9999'"):
            assert time.monotonic() < deadline, "probe listener never started"
            time.sleep(0.2)
        assert host.run("curl -s -o /dev/null http://127.0.0.1:9999/").rc == 0  # it does answer
        assert not _tcp_open(rehearsal["address"], 9999)
        assert not _tcp_open(rehearsal["address"], 5432)
    finally:
        host.run("systemctl stop plinth-fw-probe")


def test_outbound_still_works(host):
    # apt and ACME go out; replies come back as established traffic.
    assert host.run("apt-get -qq update").rc == 0
