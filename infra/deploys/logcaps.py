"""Log caps: nginx's logs rotated by size as well as daily, logrotate every hour, so a flood
of requests cannot fill the disk (the journal's cap is in base: journald_system_max_use)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from infra.deploys import layout
from infra.deploys.hostops import applied_file, apply_conditions
from infra.deploys.templating import template

LOGCAPS_DEFAULTS = {
    # An nginx log is rotated once it passes this size (checked hourly), and daily anyway.
    "nginx_log_max_size": "100M",
    # Rotated nginx logs kept per log file (compressed).
    "nginx_log_rotate": 14,
}
# logrotate.timer's drop-in: every hour instead of Debian's daily.
HOURLY_DROPIN = f"{layout.SYSTEMD_UNIT_DIR}/logrotate.timer.d/{layout.APP_NAME}-hourly.conf"


@deploy("Log caps", data_defaults=LOGCAPS_DEFAULTS)
def logcaps() -> None:
    data = host.data
    apt.packages(name="logrotate", packages=["logrotate"], no_recommends=True)
    template(
        "logrotate/nginx.j2",
        "/etc/logrotate.d/nginx",
        name=f"nginx logs: rotated daily or past {data.nginx_log_max_size}",
        max_size=data.nginx_log_max_size,
        rotate=int(data.nginx_log_rotate),
    )
    hourly = template(
        "systemd/logrotate-hourly.conf.j2", HOURLY_DROPIN, name="logrotate.timer: hourly"
    )
    apply, record = apply_conditions("logrotate-timer", HOURLY_DROPIN, hourly)
    systemd.daemon_reload(name="systemd reads logrotate.timer's drop-in", _if=apply)
    systemd.service(
        name="logrotate.timer active", service="logrotate.timer", running=True, enabled=True
    )
    systemd.service(
        name="Restart logrotate.timer (schedule changed)",
        service="logrotate.timer",
        restarted=True,
        _if=apply,
    )
    applied_file(
        name="logrotate.timer's schedule in effect (recorded)",
        key="logrotate-timer",
        path=HOURLY_DROPIN,
        _if=record,
    )
