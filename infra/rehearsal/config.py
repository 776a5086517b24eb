"""Settings of one rehearsal: CLI options first, then PLINTH_* environment variables, then defaults.

Everything that could collide with something else on the machine (state directory, machine name,
subnet, ports) is configurable, so the tool's own tests can run beside a live rehearsal.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from infra.rehearsal.errors import RehearsalError

REPO_ROOT = Path(__file__).resolve().parents[2]

RELEASES = ("bookworm", "trixie")
DEFAULT_RELEASE = "bookworm"
DEFAULT_NAME = "plinth-rehearsal"
# 10.213.0.0/24: not a common default of Docker, libvirt, LXD, VPNs or the scratch host (10.77/24).
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_DOMAIN = "plinth.rehearsal.test"
DEFAULT_PORTS = {
    "pebble": 14000,  # ACME directory, on the gateway address
    "pebble_management": 15000,  # pebble's /roots/0 etc.
    "dns": 8053,  # pebble-challtestsrv as pebble's DNS (udp+tcp)
    "challtestsrv_management": 8055,  # cannot be switched off; bound to the gateway too
}
# Long enough for a concurrent `up` that only unpacks a cached rootfs and boots.
DEFAULT_LOCK_TIMEOUT = 60.0
DEFAULT_BOOT_TIMEOUT = 90.0
# The rootfs lives on a tmpfs of at most this size (see rootfs.unpack); "0" or "off": on disk.
DEFAULT_TMPFS_SIZE = "6G"
_SIZE_RE = re.compile(r"^[1-9][0-9]*[KMG]?\Z")

ENV_PREFIX = "PLINTH_REHEARSAL_"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]\Z")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")
_TOOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    cache_dir: Path
    name: str
    subnet: ipaddress.IPv4Network
    domain: str
    release: str | None  # None: not asked for explicitly (use the running one, else the default)
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    extra_tools: dict[str, str] = field(default_factory=dict)  # binary -> Debian package
    tmpfs_size: str | None = DEFAULT_TMPFS_SIZE  # None: unpack onto the disk instead
    # Subnets of other rehearsals this host reaches, and is reached from, without NAT (two
    # hosts of one split topology: the app host and the database's).
    peers: tuple[ipaddress.IPv4Network, ...] = ()

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 2

    @property
    def nft_table(self) -> str:
        # nft identifiers may not contain '-'; the table is named after the machine so two
        # rehearsals (or a test run beside a live one) never share it.
        return self.name.replace("-", "_")

    @property
    def rootfs_cache(self) -> Path:
        return self.cache_dir / "rootfs"


def _env(key: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + key)
    return value if value not in (None, "") else None


def _default_cache_dir() -> Path:
    if os.environ.get("PLINTH_CACHE_DIR"):
        return Path(os.environ["PLINTH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "plinth"


def _parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise RehearsalError(f"invalid subnet {text!r}: {exc}") from None
    if subnet.prefixlen > 29 or not subnet.is_private:
        raise RehearsalError(f"subnet {text} must be a private IPv4 network of /29 or larger")
    return subnet


def _parse_port(key: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise RehearsalError(f"invalid port for {key}: {text!r}")
    return port


def _parse_tools(text: str) -> dict[str, str]:
    """`binary=package,binary=package`: extra host tools to require (tests use a missing one)."""
    tools: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        binary, _, package = item.partition("=")
        package = package or binary
        if not (_TOOL_RE.match(binary) and _TOOL_RE.match(package)):
            raise RehearsalError(f"invalid tool spec {item!r} (want binary=package)")
        tools[binary] = package
    return tools


def _parse_seconds(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise RehearsalError(f"invalid number of seconds for {key}: {text!r}")
    return value


def load_settings(
    *,
    state_dir: str | None = None,
    cache_dir: str | None = None,
    name: str | None = None,
    subnet: str | None = None,
    domain: str | None = None,
    release: str | None = None,
    lock_timeout: str | None = None,
) -> Settings:
    """Merge CLI values (given here) over environment variables over defaults, validating all."""
    name = name or _env("NAME") or DEFAULT_NAME
    if not _NAME_RE.match(name):
        raise RehearsalError(f"invalid machine name {name!r} (lowercase letters, digits, '-')")
    domain = (domain or _env("DOMAIN") or DEFAULT_DOMAIN).lower()
    if not _DOMAIN_RE.match(domain):
        raise RehearsalError(f"invalid domain {domain!r}")
    release = release or _env("RELEASE")
    if release is not None and release not in RELEASES:
        raise RehearsalError(f"unknown release {release!r} (choose from {', '.join(RELEASES)})")
    ports = {
        key: _parse_port(key, _env(key.upper() + "_PORT") or str(default))
        for key, default in DEFAULT_PORTS.items()
    }
    if len(set(ports.values())) != len(ports):
        raise RehearsalError(f"ports must differ: {ports}")
    return Settings(
        state_dir=Path(state_dir or _env("DIR") or REPO_ROOT / ".rehearsal").absolute(),
        cache_dir=Path(cache_dir or _default_cache_dir()).absolute(),
        name=name,
        subnet=_parse_subnet(subnet or _env("SUBNET") or DEFAULT_SUBNET),
        domain=domain,
        release=release,
        ports=ports,
        lock_timeout=_parse_seconds(
            "lock timeout", lock_timeout or _env("LOCK_TIMEOUT") or str(DEFAULT_LOCK_TIMEOUT)
        ),
        boot_timeout=_parse_seconds(
            "boot timeout", _env("BOOT_TIMEOUT") or str(DEFAULT_BOOT_TIMEOUT)
        ),
        extra_tools=_parse_tools(_env("EXTRA_TOOLS") or ""),
        tmpfs_size=_parse_size(_env("TMPFS_SIZE") or DEFAULT_TMPFS_SIZE),
        peers=_parse_peers(_env("PEERS") or "", subnet or _env("SUBNET") or DEFAULT_SUBNET),
    )


def _parse_peers(text: str, own: str) -> tuple[ipaddress.IPv4Network, ...]:
    """`subnet,subnet`: other rehearsals' subnets, none overlapping this one's."""
    peers = tuple(_parse_subnet(part.strip()) for part in text.split(",") if part.strip())
    for peer in peers:
        if peer.overlaps(ipaddress.IPv4Network(own)):
            raise RehearsalError(f"peer subnet {peer} overlaps this rehearsal's subnet {own}")
    return peers


def _parse_size(text: str) -> str | None:
    if text in ("0", "off", "no"):
        return None
    if not _SIZE_RE.match(text):
        raise RehearsalError(f"invalid tmpfs size {text!r} (e.g. 6G, or off)")
    return text
