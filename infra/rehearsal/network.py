"""The control machine's side of the rehearsal network: the veth's address, NAT, ip_forward.

NAT lives in an nftables table of the rehearsal's own (`ip <name>`), so removing it is deleting
one table, and nothing else's rules (another rehearsal's, a firewall's) are touched.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.proc import run

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def nft_table_exists(table: str) -> bool:
    return run(["nft", "list", "table", "ip", table], check=False).returncode == 0


def add_nat(table: str, subnet: str, iface: str, peers: list[str] | tuple[str, ...] = ()) -> None:
    """Masquerade the subnet's traffic to the outside; forward only what comes from the
    rehearsal's veth with a subnet source, and only replies back into it. The chains' policy
    is accept so traffic that is not the rehearsal's is left to whatever else decides it.
    `peers` (other rehearsals' subnets) are reached without NAT and may open connections in,
    as the hosts of one private network do."""
    peer_set = "{ " + ", ".join(peers) + " }" if peers else ""
    not_to_peers = f"ip daddr != {peer_set} " if peers else ""
    from_peers = f'oifname "{iface}" ip saddr {peer_set} accept' if peers else ""
    ruleset = f"""
table ip {table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} ip daddr != {subnet} {not_to_peers}masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{iface}" ip saddr {subnet} accept
        {from_peers}
        oifname "{iface}" ct state established,related accept
        iifname "{iface}" drop
        oifname "{iface}" drop
    }}
}}
"""
    run(["nft", "-f", "-"], input=ruleset, what=f"creating nftables table ip {table}")


def delete_nat(table: str) -> None:
    if nft_table_exists(table):
        run(["nft", "delete", "table", "ip", table], what=f"deleting nftables table ip {table}")


def read_ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


def enable_ip_forward() -> str:
    """Turn forwarding on; return the value to restore on teardown."""
    old = read_ip_forward()
    if old != "1":
        IP_FORWARD.write_text("1\n")
    return old


def restore_ip_forward(old: str | None) -> None:
    # Only put back a value we changed, and only if nobody changed it since.
    if old in ("0", "1") and old != "1" and read_ip_forward() == "1":
        IP_FORWARD.write_text(f"{old}\n")


def link_by_index(index: int) -> str | None:
    for link in json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]"):
        if link.get("ifindex") == index:
            return link.get("ifname")
    return None


def link_exists(iface: str) -> bool:
    return run(["ip", "link", "show", "dev", iface], check=False).returncode == 0


def configure_gateway(iface: str, gateway: str, prefixlen: int) -> None:
    run(["ip", "addr", "add", f"{gateway}/{prefixlen}", "dev", iface], what=f"addressing {iface}")
    run(["ip", "link", "set", iface, "up"], what=f"bringing up {iface}")


def remove_link(iface: str | None) -> None:
    """The veth normally disappears with the container's namespace; this covers a leftover."""
    if iface and link_exists(iface):
        with contextlib.suppress(RehearsalError):
            run(["ip", "link", "del", "dev", iface])
