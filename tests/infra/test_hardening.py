"""Hardening seen from the host and from outside: sandboxed units, the firewall."""

from __future__ import annotations

import re
import socket
import time

import pytest
from conftest import run_deploy
from pyinfra.api import DeployError

from infra.deploys.firewall import NFT_TABLE, NFTABLES_CONF, LoadedTcpPorts, SshdPorts, open_ports
from infra.deploys.updates import SecurityUpgrades
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


def _sshd_listens_on(host, port: int) -> bool | None:
    """Whether sshd listens on `port`; None while no SSH login gets through: a reload re-executes
    sshd, which leaves port 22 closed for a moment (testinfra raises on ssh's 255)."""
    try:
        return f":{port}" in host.check_output(f"ss -Hltn 'sport = :{port}'")
    except RuntimeError:
        return None


def _wait_listening(host, port: int, listening: bool = True) -> None:
    deadline = time.monotonic() + 10
    while _sshd_listens_on(host, port) is not listening:
        assert time.monotonic() < deadline, (
            f"sshd never {'opened' if listening else 'closed'} {port}"
        )
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("config", "port"),
    [
        pytest.param("Port 22\\nPort 2222\\n", 2222, id="Port"),
        # sshd -T prints `port 22` only; the port is in the listen addresses.
        pytest.param(
            "ListenAddress 0.0.0.0:22\\nListenAddress 0.0.0.0:2223\\n", 2223, id="ListenAddress"
        ),
    ],
)
def test_firewall_keeps_every_port_sshd_listens_on_open(host, rehearsal, config, port):
    """The SSH ports are read from sshd on the host, not assumed to be the one the deploy
    connects on (behind a NAT, as Vagrant's, that is another): one sshd adds is opened by the
    next deploy and closed by the one after sshd drops it."""
    dropin = "/etc/ssh/sshd_config.d/90-plinth-test-port.conf"
    assert host.run(f"printf '{config}' > {dropin} && systemctl reload ssh").rc == 0
    try:
        _wait_listening(host, port)
        assert not _tcp_open(rehearsal["address"], port)  # dropped until a deploy reads sshd
        deployed = run_deploy()
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        assert _tcp_open(rehearsal["address"], port)
    finally:
        host.run(f"rm -f {dropin} && systemctl reload ssh")
        _wait_listening(host, port, listening=False)  # and sshd takes logins again
        restored = run_deploy()
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert str(port) not in host.check_output("nft list ruleset")
    assert _tcp_open(rehearsal["address"], 22)


def test_sshd_s_ports_are_read_from_its_effective_configuration():
    output = [
        "port 22",
        "port 2222",
        "addressfamily any",
        "listenaddress [::]:22",
        "permitrootlogin no",
    ]
    assert SshdPorts().process(output) == [22, 2222]
    # `ListenAddress 0.0.0.0:2200`: sshd listens there only, though -T still prints port 22.
    only_listen = ["port 22", "listenaddress [::]:2200", "listenaddress 0.0.0.0:2200"]
    assert SshdPorts().process(only_listen) == [22, 2200]
    # sshd -T failing (a broken configuration) gives no port, so the deploy stops, not the SSH.
    assert SshdPorts().process(["/etc/ssh/sshd_config line 3: Bad configuration option"]) == []
    with pytest.raises(DeployError, match="names no port"):
        open_ports([80, 443], [])


@pytest.mark.parametrize("listed", ["443", [80, "https"], [80, 0], [True], None])
def test_a_bad_port_list_is_refused_in_one_line(listed):
    with pytest.raises(
        DeployError, match=r"^firewall_tcp_ports .*(not a list of ports|1\.\.65535)"
    ):
        open_ports(listed, [22])


def test_the_open_ports_are_the_listed_ones_and_sshd_s():
    assert open_ports([443, 80], [2200]) == [80, 443, 2200]
    assert open_ports((22, "80"), [22]) == [22, 80]


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


def test_rules_the_file_has_but_nftables_never_loaded_are_loaded_by_the_next_deploy(host):
    """A run that wrote the rules and stopped before loading them: the file is up to date from
    then on, so only the loaded table shows the difference; the next deploy loads the file."""
    wanted = LoadedTcpPorts().process(
        host.check_output(f"nft list table inet {NFT_TABLE}").splitlines()
    )
    stale = "/tmp/plinth-stale-rules.nft"
    host.check_output(
        f"sed 's/tcp dport {{ /tcp dport {{ 8081, /' {NFTABLES_CONF} > {stale} && nft -f {stale}"
    )
    loaded = host.check_output(f"nft list table inet {NFT_TABLE}").splitlines()
    assert LoadedTcpPorts().process(loaded) == sorted([8081, *wanted])
    deployed = run_deploy()
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    loaded = host.check_output(f"nft list table inet {NFT_TABLE}").splitlines()
    assert LoadedTcpPorts().process(loaded) == wanted
    again = run_deploy()
    assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-2000:]


# Libraries whose downgrade could take the host (or the test's own login) down meanwhile.
_NOT_ROLLED_BACK = ("libc6", "libssl", "libpython", "libapt", "libsystemd", "libpam", "libudev")


def _security_only_libraries(host) -> list[tuple[str, str, str]]:
    """Installed libraries whose version came from a security suite alone, each with the
    older version its release's own suite has: (package, installed, older)."""
    found = []
    for line in host.check_output("apt list --installed 2>/dev/null").splitlines():
        match = re.match(r"^(lib[^/]+)/(\S+),now (\S+) ", line)
        if not match or not all(s.endswith("-security") for s in match.group(2).split(",")):
            continue
        package, installed = match.group(1), match.group(3)
        if package.startswith(_NOT_ROLLED_BACK):
            continue
        for entry in host.check_output(f"apt-cache madison {package}").splitlines():
            _, version, source = (part.strip() for part in entry.split("|"))
            if "security" not in source and version != installed:
                found.append((package, installed, version))
                break
    return found


def _pending_security_upgrades(host) -> list[str]:
    return SecurityUpgrades().process(
        host.check_output("apt-get -s -o Debug::NoLocking=1 upgrade").splitlines()
    )


def test_a_security_update_the_host_lacks_is_installed_by_the_deploy(host, deploy):
    """A host behind on security updates (one library rolled back to its release's version
    here, as an image built before the update would have it) gets them from the deploy, not
    from tomorrow's timer."""
    apt = "apt-get -qq -y -o DPkg::Lock::Timeout=120 --no-remove --allow-downgrades"
    rolled_back = next(
        (
            (package, installed)
            for package, installed, older in _security_only_libraries(host)
            if host.run(f"{apt} install {package}={older}").rc == 0
        ),
        None,
    )
    assert rolled_back, "no library could be rolled back to before its security update"
    package, installed = rolled_back
    try:
        assert package in _pending_security_upgrades(host)
        run = deploy()
        assert run.returncode == 0, run.stderr[-3000:]
        assert host.package(package).version == installed
        assert _pending_security_upgrades(host) == []
    finally:
        host.run(f"{apt} install {package}={installed}")
