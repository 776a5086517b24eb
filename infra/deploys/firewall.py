"""Firewall: nftables with inbound default-deny, only the listed TCP ports open. The rules are
checked with `nft -c` before they are loaded; the ports sshd listens on are always kept open,
so a deploy never cuts its own connection (and established connections are accepted first)."""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import DeployError, FactBase, deploy
from pyinfra.operations import apt, server, systemd

from infra.deploys import layout
from infra.deploys.templating import template

NFTABLES_CONF = "/etc/nftables.conf"
NFT_TABLE = f"{layout.APP_NAME}_firewall"

FIREWALL_DEFAULTS = {
    # TCP ports open to everyone besides SSH: HTTP (ACME HTTP-01 and the redirect), HTTPS.
    # sshd's own ports (SshdPorts) are always open as well.
    "firewall_tcp_ports": [layout.HTTP_PORT, layout.HTTPS_PORT],
}


class SshdPorts(FactBase):
    """The TCP ports sshd listens on, from its effective configuration (`sshd -T`, as root).
    Read from the host rather than taken from the port the deploy connects to: behind a NAT
    (Vagrant's forwarded 2222) that is not sshd's, and ~/.ssh/config may name one the
    inventory never sees."""

    def command(self) -> str:
        # `|| true`: a failing sshd -T yields no port, so open_ports' one line, not a fact error.
        return "sshd -T 2>&1 || true"

    def process(self, output: list[str]) -> list[int]:
        # Both keywords: `ListenAddress host:port` makes sshd listen on that port only, while
        # `sshd -T` still prints `port 22`. A port too many is open to nothing; one too few
        # would lock SSH out.
        ports = set()
        for line in output:
            keyword, _, value = line.strip().partition(" ")
            if keyword == "listenaddress":
                value = value.rpartition(":")[2]  # 0.0.0.0:2222, [::]:2222
            if keyword in ("port", "listenaddress") and value.isdigit():
                ports.add(int(value))
        return sorted(ports)


class LoadedTcpPorts(FactBase):
    """The TCP ports the loaded `table` opens (its `tcp dport ... accept` rule), or None when
    no such table is loaded."""

    def command(self, table) -> str:
        return f"nft list table inet {table} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[int] | None:
        if not output:
            return None
        for line in output:
            match = re.search(r"tcp dport (?:\{ ([0-9, ]+) \}|([0-9]+)) ct state new accept", line)
            if match:
                return sorted(int(port) for port in (match[1] or match[2]).split(","))
        return []


def open_ports(listed, sshd_ports: list[int]) -> list[int]:
    """`listed` (firewall_tcp_ports) and sshd's ports, checked; refused with one line."""
    try:
        if not isinstance(listed, list | tuple) or any(isinstance(p, bool) for p in listed):
            raise TypeError
        ports = {int(port) for port in listed}
    except (TypeError, ValueError):
        raise DeployError(f"firewall_tcp_ports {listed!r}: not a list of ports") from None
    if any(not 0 < port < 65536 for port in ports):
        raise DeployError(f"firewall_tcp_ports {sorted(ports)!r}: each must be 1..65535")
    if not sshd_ports:
        raise DeployError(
            "sshd -T names no port (is its configuration valid?): the firewall would lock SSH out"
        )
    return sorted(ports | set(sshd_ports))


@deploy("Firewall", data_defaults=FIREWALL_DEFAULTS)
def firewall() -> None:
    ports = open_ports(host.data.firewall_tcp_ports, host.get_fact(SshdPorts))
    apt.packages(name="nftables", packages=["nftables"], no_recommends=True)
    rules = template(
        "nftables/nftables.conf.j2",
        NFTABLES_CONF,
        name=f"nftables: inbound default-deny, TCP {ports} open",
        mode="755",
        table=NFT_TABLE,
        tcp_ports=ports,
    )
    # Also when the loaded rules are not these: a run that wrote the file and stopped before
    # loading it left a port open (or closed) that the file alone no longer shows.
    loaded = host.get_fact(LoadedTcpPorts, table=NFT_TABLE)
    stale = loaded != ports
    server.shell(
        name="nft -c (rules parse)",
        commands=[f"nft -c -f {NFTABLES_CONF}"],
        _if=lambda: stale or rules.did_change(),
    )
    systemd.service(name="nftables enabled", service="nftables", running=True, enabled=True)
    systemd.service(
        name=f"Load the rules (loaded now: TCP {loaded})" if stale else "Load the changed rules",
        service="nftables",
        reloaded=True,
        _if=lambda: stale or rules.did_change(),
    )
