"""Sandboxed units: systemd drop-ins that take from nginx and PostgreSQL what they do not need
(the service's own unit is sandboxed in its template, systemd/plinth.service.j2). A changed
drop-in restarts its unit; `systemd-analyze security` reads at most 5.0 for each."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import systemd

from infra.deploys import layout
from infra.deploys.hostops import applied_file, apply_conditions, host_roles
from infra.deploys.templating import template

NGINX_DROPIN = f"{layout.SYSTEMD_UNIT_DIR}/nginx.service.d/{layout.APP_NAME}-hardening.conf"
# The template unit's drop-in covers every cluster (15-main on Debian 12, 17-main on 13).
POSTGRESQL_DROPIN = (
    f"{layout.SYSTEMD_UNIT_DIR}/postgresql@.service.d/{layout.APP_NAME}-hardening.conf"
)


@deploy("Sandboxed units")
def sandbox() -> None:
    roles = host_roles()
    changed = {}
    if "app" in roles:
        changed["nginx"] = (
            NGINX_DROPIN,
            template(
                "systemd/nginx-hardening.conf.j2",
                NGINX_DROPIN,
                name="nginx.service sandbox drop-in",
            ),
        )
    if "db" in roles:
        changed["postgresql"] = (
            POSTGRESQL_DROPIN,
            template(
                "systemd/postgresql-hardening.conf.j2",
                POSTGRESQL_DROPIN,
                name="postgresql@.service sandbox drop-in",
            ),
        )
    for unit, (path, dropin) in changed.items():
        apply, record = apply_conditions(f"sandbox-{unit}", path, dropin)
        systemd.daemon_reload(name=f"systemd reads {unit}'s drop-in", _if=apply)
        # postgresql.service restarts its clusters (PartOf); nginx restarts in about a second.
        systemd.service(
            name=f"Restart {unit} (its sandbox changed)",
            service=unit,
            restarted=True,
            _if=apply,
        )
        applied_file(
            name=f"{unit}'s sandbox in effect (recorded)",
            key=f"sandbox-{unit}",
            path=path,
            _if=record,
        )
