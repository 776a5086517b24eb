"""Security updates: those released since the host's image was built are installed by the
deploy, and Debian's unattended-upgrades, run daily by apt's own timers, keeps it so."""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import apt, systemd
from pyinfra.operations.apt import APT_UPDATE_FILENAME  # the stamp apt.update reads too

from infra.deploys import layout
from infra.deploys.base import BASE_DEFAULTS
from infra.deploys.templating import template

# apt-daily refreshes the package lists, apt-daily-upgrade installs the updates.
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")
# `apt-get -s upgrade` prints "Inst NAME [OLD] (NEW ORIGINS [ARCH])" per package it would
# upgrade; ORIGINS names every suite that has NEW, comma-separated, e.g.
# "Debian:12.9/oldstable, Debian-Security:12/oldstable-security" (a fix a point release took in).
_SIMULATED_INSTALL = re.compile(r"^Inst (\S+) .*\((\S+) ([^\[]*)\[")


class SecurityUpgrades(FactBase):
    """Installed packages with an upgrade waiting in a security suite: what `apt-get upgrade`
    would take from one (the check of Lynis's PKGS-7392). Facts are read before any operation
    runs, so base's `apt.update` would come too late for this one: package lists older than
    `cache_seconds` are refreshed here first."""

    def command(self, cache_seconds: int) -> str:
        minutes = max(1, int(cache_seconds) // 60)
        return (
            f'if [ -z "$(find {APT_UPDATE_FILENAME} -mmin -{minutes} 2>/dev/null)" ]; then '
            "apt-get -qq update >/dev/null 2>&1 || true; fi; "
            "apt-get -s -o Debug::NoLocking=1 upgrade 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> list[str]:
        names = set()
        for line in output:
            match = _SIMULATED_INSTALL.match(line)
            if match and "security" in match.group(3).lower():  # any of its suites
                names.add(match.group(1))
        return sorted(names)


@deploy("Security updates")
def updates() -> None:
    cache_seconds = host.data.get("apt_cache_seconds", BASE_DEFAULTS["apt_cache_seconds"])
    pending = host.get_fact(SecurityUpgrades, cache_seconds=cache_seconds)
    if pending:
        # apt-get upgrade rather than installing the named packages: installing would mark
        # them (libraries among them) as manually installed. It keeps the changed
        # configuration files this deploy writes (pyinfra passes --force-confold).
        apt.upgrade(name=f"Security updates released since the image: {', '.join(pending)}")
    apt.packages(name="unattended-upgrades", packages=["unattended-upgrades"], no_recommends=True)
    template(
        "apt/auto-upgrades.j2", layout.APT_AUTO_UPGRADES, name="apt: daily unattended upgrades"
    )
    for timer in APT_TIMERS:
        systemd.service(name=f"{timer} enabled", service=timer, running=True, enabled=True)
