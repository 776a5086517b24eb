"""Base: apt cache policy, packages, UTC, locale, the service's system user, persistent
journald with a size cap."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from infra.deploys import layout
from infra.deploys.accounts import account
from infra.deploys.hostops import applied_file, apply_conditions
from infra.deploys.templating import template

BASE_DEFAULTS = {
    # Run `apt-get update` only when the cache is older than this many seconds.
    "apt_cache_seconds": 3600,
    # Debian packages every host gets (deploys add their own on top).
    "base_packages": ["ca-certificates", "curl", "tzdata", "python3", "python3-venv", "sudo"],
    # The host's timezone; logs and timestamps are UTC everywhere.
    "timezone": "Etc/UTC",
    # System locale (LANG). C.UTF-8 is built into Debian, nothing to generate.
    "locale": "C.UTF-8",
    # Journald keeps logs across reboots, capped so a log flood cannot fill the disk.
    "journald_system_max_use": "500M",
    "journald_max_file_sec": "1month",
}


@deploy("Base", data_defaults=BASE_DEFAULTS)
def base() -> None:
    data = host.data
    apt.update(name="apt cache is fresh", cache_time=data.apt_cache_seconds)
    packages = list(data.base_packages)
    if data.locale != "C.UTF-8":
        packages.append("locales")
    apt.packages(name="Base packages", packages=packages, no_recommends=True)

    files.link(
        name=f"Timezone {data.timezone}",
        path="/etc/localtime",
        target=f"/usr/share/zoneinfo/{data.timezone}",
    )
    files.put(
        name="/etc/timezone",
        src=_text(f"{data.timezone}\n"),
        dest="/etc/timezone",
        mode="644",
    )
    if data.locale != "C.UTF-8":
        server.locale(name=f"Locale {data.locale} generated", locale=data.locale)
    files.put(
        name=f"LANG={data.locale}",
        src=_text(f"LANG={data.locale}\n"),
        dest=_debian()["locale_file"],
        mode="644",
    )

    server.group(name="Service group", group=layout.SERVICE_GROUP, system=True)
    account(  # noqa: S604 (a login shell, not subprocess shell=True)
        name="Service user, no login shell",
        user=layout.SERVICE_USER,
        group=layout.SERVICE_GROUP,
        home=layout.APP_ROOT,
        shell="/usr/sbin/nologin",
        system=True,
        create_home=False,
        ensure_home=False,
    )

    files.directory(
        name="Persistent journal", path="/var/log/journal", mode="2755", group="systemd-journal"
    )
    journald = template(
        "journald/50-plinth.conf.j2",
        layout.JOURNALD_DROPIN,
        name="journald: persistent, size-capped",
        system_max_use=data.journald_system_max_use,
        max_file_sec=data.journald_max_file_sec,
    )
    restart, record = apply_conditions("journald", layout.JOURNALD_DROPIN, journald)
    systemd.service(
        name="Restart journald", service="systemd-journald", restarted=True, _if=restart
    )
    applied_file(
        name="journald's caps in effect (recorded)",
        key="journald",
        path=layout.JOURNALD_DROPIN,
        _if=record,
    )


def _debian() -> dict:
    release = str((host.get_fact(LinuxDistribution) or {}).get("major"))
    return layout.SUPPORTED_DEBIAN.get(release) or layout.SUPPORTED_DEBIAN["12"]


def _text(content: str):
    from io import StringIO

    return StringIO(content)
