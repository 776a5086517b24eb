"""Firewall: nftables with inbound default-deny, only the listed TCP ports open. The rules are
checked with `nft -c` before they are loaded; the SSH port is always kept open, so a deploy
never cuts its own connection (and established connections are accepted first)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import DeployError, deploy
from pyinfra.operations import apt, server, systemd

from infra.deploys import layout
from infra.deploys.templating import template

NFTABLES_CONF = "/etc/nftables.conf"
NFT_TABLE = f"{layout.APP_NAME}_firewall"

FIREWALL_DEFAULTS = {
    # TCP ports open to everyone: SSH, HTTP (ACME HTTP-01 and the redirect), HTTPS.
    "firewall_tcp_ports": [22, layout.HTTP_PORT, layout.HTTPS_PORT],
    # The SSH port the deploy connects on; refused unless it is in firewall_tcp_ports.
    "ssh_port": 22,
}


def open_ports(data) -> list[int]:
    try:
        ports = sorted({int(port) for port in data.firewall_tcp_ports})
    except (TypeError, ValueError):
        raise DeployError(f"firewall_tcp_ports {data.firewall_tcp_ports!r}: not ports") from None
    if not ports or any(not 0 < port < 65536 for port in ports):
        raise DeployError(f"firewall_tcp_ports {ports!r}: each must be 1..65535")
    if int(data.ssh_port) not in ports:
        raise DeployError(
            f"firewall_tcp_ports {ports!r} lacks ssh_port {data.ssh_port}: the deploy would "
            "lock itself out"
        )
    return ports


@deploy("Firewall", data_defaults=FIREWALL_DEFAULTS)
def firewall() -> None:
    ports = open_ports(host.data)
    apt.packages(name="nftables", packages=["nftables"], no_recommends=True)
    rules = template(
        "nftables/nftables.conf.j2",
        NFTABLES_CONF,
        name=f"nftables: inbound default-deny, TCP {ports} open",
        mode="755",
        table=NFT_TABLE,
        tcp_ports=ports,
    )
    server.shell(
        name="nft -c (rules parse)", commands=[f"nft -c -f {NFTABLES_CONF}"], _if=rules.did_change
    )
    systemd.service(name="nftables enabled", service="nftables", running=True, enabled=True)
    systemd.service(
        name="Load the changed rules",
        service="nftables",
        reloaded=True,
        _if=rules.did_change,
    )
