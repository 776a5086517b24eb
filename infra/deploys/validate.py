"""Refuse bad inventory data before anything changes on any host, with one line."""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import DeployError, deploy
from pyinfra.facts.server import LinuxDistribution

from infra.deploys import layout
from infra.deploys.app import APP_DEFAULTS
from infra.deploys.base import BASE_DEFAULTS
from infra.deploys.nginx import NGINX_DEFAULTS
from infra.deploys.postgres import POSTGRES_DEFAULTS

WORKERS_RANGE = range(1, 33)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}$"
)
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}$")
# Names people leave in templates instead of their own.
_PLACEHOLDER = re.compile(
    r"(^|\.)example\.(com|org|net)$|^example\.|change-?me|replace-?me|your-?domain|placeholder"
    r"|^domain\.tld$|^localhost$",
    re.IGNORECASE,
)


class InventoryDataError(DeployError):
    """Bad inventory data; its message is the one line the user sees."""


def _fail(message: str) -> None:
    raise InventoryDataError(f"inventory data for {host.name}: {message}")


def check_domain(domain) -> None:
    if not domain:
        _fail("domain is not set")
    name = str(domain).lower().rstrip(".")
    if _PLACEHOLDER.search(name):
        _fail(f"domain {domain!r} is a placeholder; set the host's real name")
    if not _HOSTNAME.match(name):
        _fail(f"domain {domain!r} is not a valid DNS name")


def check_email(email) -> None:
    if email is None:
        return
    if not _EMAIL.match(str(email)):
        _fail(f"tls_acme_email {email!r} is not a valid e-mail address")
    if _PLACEHOLDER.search(str(email).rsplit("@", 1)[-1]) or "changeme" in str(email).lower():
        _fail(f"tls_acme_email {email!r} is a placeholder; set a real contact address")


def check_workers(workers) -> None:
    if isinstance(workers, str) and workers.isdigit():
        workers = int(workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers not in WORKERS_RANGE:
        _fail(
            f"app_workers {workers!r} is out of range "
            f"({WORKERS_RANGE.start}..{WORKERS_RANGE.stop - 1})"
        )


def check_db_roles(service_role, owner_role) -> None:
    for key, role in (("db_user", service_role), ("db_owner", owner_role)):
        if not isinstance(role, str) or not _ROLE.match(role):
            _fail(f"{key} {role!r} is not a plain PostgreSQL role name ([a-z_][a-z0-9_]*)")
    if service_role == owner_role:
        _fail(f"db_user and db_owner are both {owner_role!r}: the service must not own its tables")


def check_distribution() -> None:
    distro = host.get_fact(LinuxDistribution) or {}
    name, major = distro.get("name"), str(distro.get("major"))
    if name != "Debian" or major not in layout.SUPPORTED_DEBIAN:
        supported = ", ".join(
            f"Debian {v} ({r['codename']})" for v, r in layout.SUPPORTED_DEBIAN.items()
        )
        _fail(f"distribution {name or 'unknown'} {major} is not supported (only {supported})")


@deploy(
    "Validate inventory data",
    data_defaults={**BASE_DEFAULTS, **POSTGRES_DEFAULTS, **APP_DEFAULTS, **NGINX_DEFAULTS},
)
def validate() -> None:
    """Every rule, read from the merged data; only reads facts, changes nothing."""
    data = host.data
    check_domain(data.domain)
    check_email(data.get("tls_acme_email"))
    check_workers(data.app_workers)
    check_db_roles(data.db_user, data.db_owner)
    check_distribution()
