"""Checks before `up` creates anything: root, host tools, a free subnet, free ports.

Each failure is one RehearsalError line; none of these checks changes the machine except the
apt-get install of missing host tools, which is the documented first step of a rehearsal.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import socket

from infra.rehearsal.config import Settings
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.proc import run, say

# binary -> Debian package that ships it
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "zstd": "zstd",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "pebble": "pebble",
    "pebble-challtestsrv": "pebble",
    "openssl": "openssl",
    "ip": "iproute2",
    "ss": "iproute2",
    "nsenter": "util-linux",
    "tar": "tar",
}
# Root's tools live in sbin, which a non-login PATH (sudo, make, uv run) may lack.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def ensure_sbin_on_path() -> None:
    parts = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(parts + [d for d in _SBIN if d not in parts])


def require_root() -> None:
    if os.geteuid() != 0:
        raise RehearsalError(
            "must run as root (systemd-nspawn, veth and nftables need it): try sudo"
        )


def require_tools(settings: Settings) -> None:
    """Install the Debian packages of missing tools, then insist every binary is there."""
    tools = {**HOST_TOOLS, **settings.extra_tools}
    missing = {binary: package for binary, package in tools.items() if not shutil.which(binary)}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if not shutil.which("apt-get"):
        raise RehearsalError(
            f"host tools missing ({', '.join(sorted(missing))}) and apt-get is not available"
            f" to install {', '.join(packages)}"
        )
    say(f"installing host packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # The test lanes run side by side and may install at the same time: wait for dpkg's lock.
    argv = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", *packages]
    result = run(argv, check=False, env=env, timeout=600)
    if result.returncode != 0:
        # Stale package lists are the usual cause: refresh once and retry.
        run(["apt-get", "update", "-q"], check=False, env=env, timeout=600)
        result = run(argv, check=False, env=env, timeout=600)
    still = {b: p for b, p in missing.items() if not shutil.which(b)}
    if result.returncode != 0:
        raise RehearsalError(
            f"cannot install host packages {' '.join(packages)}"
            f" (needed for {', '.join(sorted(missing))}): {_apt_error(result)}"
        )
    if still:
        binary, package = sorted(still.items())[0]
        raise RehearsalError(
            f"host tool {binary} is still missing after installing Debian package {package}"
        )


def _apt_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("E:")]
    return errors[0] if errors else (result.stderr.strip().splitlines() or ["apt-get failed"])[-1]


def require_free_subnet(settings: Settings) -> None:
    """No address or route on this machine may overlap the rehearsal subnet."""
    subnet = settings.subnet
    for link in json.loads(run(["ip", "-j", "addr", "show"]).stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            network = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
            if network.overlaps(subnet):
                raise RehearsalError(
                    f"subnet {subnet} is already in use on this machine: address"
                    f" {info['local']}/{info['prefixlen']} on {link.get('ifname')}"
                    " (choose another with --subnet or PLINTH_REHEARSAL_SUBNET)"
                )
    routes = run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout
    for route in json.loads(routes or "[]"):
        dst = route.get("dst", "default")
        if dst == "default":
            continue
        try:
            network = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if network.overlaps(subnet):
            raise RehearsalError(
                f"subnet {subnet} is already in use on this machine: route {dst}"
                f" dev {route.get('dev', '?')} (choose another with --subnet or"
                " PLINTH_REHEARSAL_SUBNET)"
            )


def require_free_ports(settings: Settings) -> None:
    """Pebble and challtestsrv bind on the gateway address, which does not exist yet:
    IP_FREEBIND lets us test-bind there now, which catches wildcard listeners (0.0.0.0) as
    well as one on the very address, but not listeners on other addresses (no conflict)."""
    host = str(settings.gateway)
    wanted = [(key, port, socket.SOCK_STREAM) for key, port in settings.ports.items()]
    wanted.append(("dns", settings.ports["dns"], socket.SOCK_DGRAM))
    for key, port, kind in wanted:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise RehearsalError(f"cannot check port {port}: {exc.strerror}") from None
                proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
                raise RehearsalError(
                    f"port {port}/{proto} ({key.replace('_', ' ')}) is already in use"
                    f"{_port_holder(port, proto)} (set PLINTH_REHEARSAL_{key.upper()}_PORT"
                    " to another)"
                ) from None


_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def _port_holder(port: int, proto: str) -> str:
    flag = "-Hlntp" if proto == "tcp" else "-Hlnup"
    result = run(["ss", flag, f"sport = :{port}"], check=False)
    match = re.search(r'users:\(\("([^"]+)",pid=(\d+)', result.stdout)
    return f" by {match.group(1)} (pid {match.group(2)})" if match else ""


def require_no_leftovers(settings: Settings, nft_table_exists: bool) -> None:
    if nft_table_exists:
        raise RehearsalError(
            f"nftables table ip {settings.nft_table} already exists (left over from an earlier"
            " rehearsal?): run `python -m infra.rehearsal down` with the same --name first"
        )
