"""Every inventory data key plinth reads: the union of the deploys' data_defaults, where each
is documented. validate.py refuses any other key, which is most likely a typo: pyinfra would
ignore it in silence, and the deploy would use the default the user meant to change."""

from __future__ import annotations

import difflib

from infra.deploys.access import ACCESS_DEFAULTS
from infra.deploys.app import APP_DEFAULTS
from infra.deploys.backups import BACKUP_DEFAULTS
from infra.deploys.base import BASE_DEFAULTS
from infra.deploys.cutover import RELEASE_DEFAULTS
from infra.deploys.firewall import FIREWALL_DEFAULTS
from infra.deploys.logcaps import LOGCAPS_DEFAULTS
from infra.deploys.nginx import NGINX_DEFAULTS
from infra.deploys.os_hardening import HARDENING_DEFAULTS
from infra.deploys.postgres import POSTGRES_DEFAULTS
from infra.deploys.tls import TLS_DEFAULTS

KNOWN_KEYS = frozenset().union(
    ACCESS_DEFAULTS,
    APP_DEFAULTS,
    BACKUP_DEFAULTS,
    BASE_DEFAULTS,
    RELEASE_DEFAULTS,
    FIREWALL_DEFAULTS,
    LOGCAPS_DEFAULTS,
    NGINX_DEFAULTS,
    HARDENING_DEFAULTS,
    POSTGRES_DEFAULTS,
    TLS_DEFAULTS,
)
# pyinfra's own: operation arguments (`_sudo`, `_temp_dir`) and its SSH connector's keys.
PYINFRA_PREFIXES = ("_", "ssh_")


def unknown_keys(data: dict) -> list[str]:
    """Keys of `data` no deploy reads, each with the known key it most resembles."""
    unknown = []
    for key in sorted(data):
        if key in KNOWN_KEYS or key.startswith(PYINFRA_PREFIXES):
            continue
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        unknown.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return unknown
