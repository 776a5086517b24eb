"""Security updates: Debian's unattended-upgrades, run daily by apt's own timers."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from infra.deploys import layout
from infra.deploys.templating import template

# apt-daily refreshes the package lists, apt-daily-upgrade installs the updates.
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")


@deploy("Security updates")
def updates() -> None:
    apt.packages(name="unattended-upgrades", packages=["unattended-upgrades"], no_recommends=True)
    template(
        "apt/auto-upgrades.j2", layout.APT_AUTO_UPGRADES, name="apt: daily unattended upgrades"
    )
    for timer in APT_TIMERS:
        systemd.service(name=f"{timer} enabled", service=timer, running=True, enabled=True)
