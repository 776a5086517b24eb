"""Refuse bad inventory data before anything changes on any host, with one line."""

from __future__ import annotations

import ipaddress
import re
import shlex
import zoneinfo

from pyinfra import host
from pyinfra.api import DeployError, FactBase, deploy
from pyinfra.facts.server import LinuxDistribution

from infra.deploys import layout
from infra.deploys.access import ACCESS_DEFAULTS
from infra.deploys.app import APP_DEFAULTS, ENV_FROM_DATA
from infra.deploys.backups import BACKUP_DEFAULTS
from infra.deploys.base import BASE_DEFAULTS
from infra.deploys.cutover import RELEASE_DEFAULTS
from infra.deploys.firewall import FIREWALL_DEFAULTS
from infra.deploys.hostops import host_roles
from infra.deploys.logcaps import LOGCAPS_DEFAULTS
from infra.deploys.nginx import NGINX_DEFAULTS
from infra.deploys.os_hardening import HARDENING_DEFAULTS
from infra.deploys.postgres import POSTGRES_DEFAULTS, listen_addresses
from service.config import Settings

WORKERS_RANGE = range(1, 33)
# Every pattern here ends in \Z, not $: $ matches before a final newline too, and a value read
# from a file ("plinth\n") passed, to land in pg_hba.conf, a unit or a script as a line break.
DNS_NAME = re.compile(
    r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}\Z"
)
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
# Role names PostgreSQL keeps for itself (CREATE ROLE refuses them, or they name something
# else), its superuser (migrations would run as it, and pg_hba.conf's `local all postgres peer`,
# read first, would fail the deploy's password check every time), and `all`, which pg_hba.conf
# reads as every role. The names are quoted in SQL and _ROLE admits lower case only: no folding.
_RESERVED_ROLES = (
    "postgres",
    "public",
    "none",
    "all",
    "current_user",
    "session_user",
    "current_role",
)
# Words pg_hba.conf reads as keywords where its template writes db_name (unquoted, lower case).
_HBA_DATABASE_KEYWORDS = ("all", "sameuser", "samerole", "samegroup", "replication")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\Z")
# Names people leave in templates instead of their own.
_PLACEHOLDER = re.compile(
    r"(^|\.)example\.(com|org|net)$|^example\.|change-?me|replace-?me|your-?domain|placeholder"
    r"|^domain\.tld$|^localhost$",
    re.IGNORECASE,
)


def _service_range(key: str) -> tuple[int, int]:
    """The bounds service/config.py sets on the PLINTH_* setting `key` fills in (ENV_FROM_DATA).
    Past them, the service's own check refused the env file on the host, mid-deploy, naming
    PLINTH_* rather than the key."""
    setting = next(name for name, data_key in ENV_FROM_DATA.items() if data_key == key)
    metadata = Settings.model_fields[setting.lower()].metadata
    lowest = next(m.ge for m in metadata if hasattr(m, "ge"))
    highest = next(m.le for m in metadata if hasattr(m, "le"))
    return lowest, highest


# Numbers: key -> (lowest, highest or None). Each deploy's data_defaults says what they mean.
_NUMBERS = {
    "db_port": (1, 65535),
    "db_max_connections": (10, 262143),  # PostgreSQL's own limit: it would not start
    "apt_cache_seconds": (0, None),
    # 0 would let no one log in once sshd reloads (no session, no authentication attempt).
    "ssh_max_auth_tries": (1, None),
    "ssh_max_sessions": (2, None),  # a command and an upload (SFTP) each take one
    "ssh_client_alive_interval": (0, None),  # 0: no keep-alive probes
    "app_max_batch_size": _service_range("app_max_batch_size"),
    "app_timeout_seconds": _service_range("app_timeout_seconds"),
    "app_graceful_timeout_seconds": _service_range("app_graceful_timeout_seconds"),
    "app_keep_releases": (1, None),
    "nginx_proxy_connect_timeout": (1, None),
    "nginx_proxy_send_timeout": (1, None),
    "nginx_proxy_read_timeout": (1, None),
    "nginx_upstream_keepalive": (1, None),
    "nginx_client_header_timeout": (1, None),
    "nginx_client_body_timeout": (1, None),
    "nginx_send_timeout": (1, None),
    "nginx_keepalive_timeout": (1, None),
    # nginx refuses `limit_req ... burst=0` ("invalid burst value"), mid-deploy.
    "nginx_predict_burst": (1, None),
    "nginx_log_rotate": (1, None),
    "backup_retention_days": (1, None),
    "shell_idle_timeout_seconds": (0, None),  # 0: no idle timeout
    "password_max_days": (1, 99999),
    "password_min_days": (0, 99999),
    "release_health_timeout": (1, 3600),
    "release_start_timeout": (1, 3600),
    "release_lock_wait": (0, 86400),
}
# A path as it may land unquoted in a script or a unit: absolute, no space, quote or `..`.
ABSOLUTE_PATH = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9._-]*)+\Z")
# Words: key -> (pattern, what it must be). They land in configuration files as they are, so a
# value that does not match would break the file (or a line of it) on the host.
_WORDS = {
    "db_name": (re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z"), "a plain PostgreSQL name"),
    "nginx_client_max_body_size": (re.compile(r"^[0-9]{1,9}[kKmMgG]?\Z"), "an nginx size, e.g. 1m"),
    "nginx_log_max_size": (re.compile(r"^[0-9]+[kKMG]?\Z"), "a logrotate size, e.g. 100M"),
    "nginx_predict_rate": (re.compile(r"^[1-9][0-9]*r/[sm]\Z"), "an nginx rate, e.g. 20r/s"),
    "timezone": (
        re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*\Z"),
        "a zone, e.g. Etc/UTC",
    ),
    "journald_system_max_use": (re.compile(r"^[0-9]+[KMGTPE]?\Z"), "a journald size, e.g. 500M"),
    # A string of octal digits: a number (27) would land in login.defs as another mask.
    "login_umask": (re.compile(r"^0?[0-7]{3}\Z"), 'an octal umask in quotes, e.g. "022"'),
    "deploy_user": (re.compile(r"^[a-z_][a-z0-9_-]{0,30}\Z"), "a plain user name, e.g. deploy"),
    # As /etc/locale.gen names them (en_US.utf8 is not there: the deploy would fail mid-run).
    "locale": (
        re.compile(r"^(C|[a-z]{2,3}_[A-Z]{2})\.UTF-8(@[a-z]+)?\Z"),
        "a UTF-8 locale as /etc/locale.gen names it, e.g. C.UTF-8 or en_US.UTF-8",
    ),
    "backup_dir": (ABSOLUTE_PATH, "an absolute path without a trailing /, e.g. /var/backups/x"),
    "journald_max_file_sec": (
        re.compile(r"^[0-9]+ ?(us|ms|s|sec|m|min|h|hr|d|day|w|week|M|month|y|year)?\Z"),
        "a journald time span, e.g. 1month",
    ),
}
# Lists of names: key -> (pattern of one entry, what it is). A string would be read one
# character at a time: "usb-storage" blocked the modules u, s, b...
_NAME_LISTS = {
    "base_packages": (re.compile(r"^[a-z0-9][a-z0-9+.-]+\Z"), 'packages, e.g. ["curl"]'),
    "hardening_packages": (re.compile(r"^[a-z0-9][a-z0-9+.-]+\Z"), 'packages, e.g. ["lynis"]'),
    "blocked_kernel_modules": (re.compile(r"^[A-Za-z0-9_-]+\Z"), 'kernel modules, e.g. ["dccp"]'),
}
# Address lists: key -> whether each entry must carry its prefix length (pg_hba.conf's does).
_NETWORK_LISTS = {
    "db_client_networks": True,
    "nginx_metrics_allow": False,
    "app_ip_address_allow": False,
}


# Values systemd reads in a unit: key -> the systemd-analyze verb that parses them (on the
# host, whose systemd will read them), and what they must be.
_SYSTEMD_VALUES = {
    "backup_on_calendar": ("calendar", 'a systemd calendar event, e.g. "*-*-* 02:30:00"'),
    "backup_randomized_delay": ("timespan", "a systemd time span, e.g. 15min"),
}


class SystemdAccepts(FactBase):
    """Whether the host's systemd-analyze parses `value` as a `verb` (calendar, timespan)."""

    def command(self, verb, value):
        return f"systemd-analyze {verb} {shlex.quote(value)} >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output):
        return output == ["yes"]


class InventoryDataError(DeployError):
    """Bad inventory data; its message is the one line the user sees."""


def _fail(message: str) -> None:
    raise InventoryDataError(f"inventory data for {host.name}: {message}")


def check_domain(domain) -> None:
    if not domain:
        _fail("domain is not set")
    if str(domain).endswith("."):  # certificates, nginx and the health check name it without
        _fail(f"domain {domain!r}: write it without the trailing dot")
    name = str(domain).lower()
    if _PLACEHOLDER.search(name):
        _fail(f"domain {domain!r} is a placeholder; set the host's real name")
    if not DNS_NAME.match(name):
        _fail(f"domain {domain!r} is not a valid DNS name")


def check_email(email) -> None:
    if email is None:
        return
    if not EMAIL.match(str(email)):
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
        if role in _RESERVED_ROLES or role.startswith("pg_"):
            _fail(f"{key} {role!r} is PostgreSQL's superuser or a name it reserves; choose another")
    if service_role == owner_role:
        _fail(f"db_user and db_owner are both {owner_role!r}: the service must not own its tables")


def check_db_name(value: str) -> None:
    if value in _HBA_DATABASE_KEYWORDS:
        _fail(f"db_name {value!r} is a keyword in pg_hba.conf's database column; choose another")


def check_number(key: str, value) -> None:
    lowest, highest = _NUMBERS[key]
    # A number, not "16": deploys compute with these (a string would fail there, mid-run).
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lowest
        or (highest is not None and value > highest)
    ):
        bounds = f"{lowest}..{highest}" if highest is not None else f"at least {lowest}"
        _fail(f"{key} {value!r} must be a whole number, {bounds}")


def check_word(key: str, value) -> None:
    pattern, what = _WORDS[key]
    if not isinstance(value, str) or not pattern.match(value):
        _fail(f"{key} {value!r} is not {what}")


def check_timezone(value: str) -> None:
    """A zone of the tz database, as this machine has it (Python's zoneinfo): a misspelt one
    would leave /etc/localtime dangling and the host quietly on UTC. Without a tz database
    here the shape check above is all."""
    zones = zoneinfo.available_timezones()
    if zones and value not in zones:
        _fail(f"timezone {value!r} is not a zone of the tz database, e.g. Etc/UTC, Europe/Berlin")


def check_name_list(key: str, value) -> None:
    pattern, what = _NAME_LISTS[key]
    if not isinstance(value, list | tuple) or not all(
        isinstance(entry, str) and pattern.match(entry) for entry in value
    ):
        _fail(f"{key} {value!r} must be a list of {what}")


def check_systemd_value(key: str, value) -> None:
    verb, what = _SYSTEMD_VALUES[key]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)  # seconds, as systemd reads a bare number
    if not isinstance(value, str) or "\n" in value or not value.strip():
        _fail(f"{key} {value!r} is not {what}")
    if value == BACKUP_DEFAULTS[key]:
        return  # known good: no command on the host for it
    if not host.get_fact(SystemdAccepts, verb=verb, value=value):
        _fail(f"{key} {value!r} is not {what} (systemd-analyze {verb} refuses it)")


# An address, or a network with its prefix length: the one form every reader here takes.
_NETWORK = re.compile(r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?\Z")


def check_networks(key: str, value) -> None:
    with_prefix = _NETWORK_LISTS[key]
    if not isinstance(value, list | tuple):  # a string would be read one character at a time
        _fail(f'{key} {value!r} must be a list of addresses, e.g. ["10.0.0.0/8"]')
    for entry in value:
        # Python also reads a netmask (10.0.0.0/255.0.0.0) and a scope (fe80::1%eth0), which
        # PostgreSQL's pg_hba.conf refuses (it would not start) and systemd ignores.
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            _fail(f"{key} entry {entry!r} is not an IP address or network")
        if not _NETWORK.match(str(entry)):
            _fail(f"{key} entry {entry!r}: write the prefix as a length, e.g. 10.0.0.0/8")
        if with_prefix and "/" not in str(entry):
            _fail(f"{key} entry {entry!r} needs its prefix length, e.g. {entry}/32")


# The units' sandboxes (the backup's, nginx's) hide these (ProtectHome=, PrivateTmp=) or have
# them read-only: a dump written there would fail every night, or land where nobody looks.
_HIDDEN_BY_SANDBOX = (  # /var/run and /var/lock lead into /run (tmpfs: gone at reboot)
    *("/home", "/root", "/run", "/var/run", "/var/lock", "/tmp", "/var/tmp"),  # noqa: S108
    *("/proc", "/sys", "/dev"),
)


def hidden_by_sandbox(path: str) -> str | None:
    """The directory of _HIDDEN_BY_SANDBOX that `path` is in, if any."""
    return next((p for p in _HIDDEN_BY_SANDBOX if f"{path}/".startswith(f"{p}/")), None)


def check_backup_dir(value: str) -> None:
    if hidden := hidden_by_sandbox(value):
        _fail(
            f"backup_dir {value!r} is under {hidden}, which the backup unit's sandbox cannot "
            f"write (or a reboot empties); choose e.g. /var/backups/{layout.APP_NAME} or a "
            "path under /srv"
        )


# A host name as resolvers take it: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# (A dot between labels is required: with an optional one, a name that fails to match, such as
# one with a port, took exponential time to refuse.)
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\Z")


def _address_or_name(text: str) -> bool:
    """An IP address (no %scope) or a host name, without a port: what PostgreSQL's
    listen_addresses and a connection's host take."""
    is_address = _is_ip_address(text) and "%" not in text
    # A last label of digits only is no name (10.0.0.256, 999): a mistyped IPv4 address.
    is_name = bool(_HOST_NAME.match(text)) and not text.rsplit(".", 1)[-1].isdigit()
    return is_address or is_name


def check_db_host(value) -> None:
    """db_host: where the service and migrations connect (a URL, a shell line, psycopg)."""
    if not _address_or_name(value if isinstance(value, str) else ""):
        _fail(
            f"db_host {value!r} must be a host name or an IP address, without a port "
            "(db_port) or brackets, e.g. db.internal or fd00::5"
        )


def check_db_host_reachable(db_host: str, allowed) -> None:
    """The service's unit reaches no address but loopback and app_ip_address_allow
    (IPAddressDeny=any): a database elsewhere would fail every request, while migrations,
    which run outside the unit, pass. Both values are checked by now."""
    if db_host.lower() == "localhost":
        return
    if not _is_ip_address(db_host):  # resolved by the service alone: its addresses are unknown
        if not allowed:
            _fail(
                f"db_host {db_host!r} is another host: list the database host's addresses in "
                "app_ip_address_allow (the service's unit reaches no other)"
            )
        return
    address = ipaddress.ip_address(db_host)
    if not address.is_loopback and not any(
        address in ipaddress.ip_network(entry, strict=False) for entry in allowed
    ):
        _fail(
            f"db_host {db_host} is not in app_ip_address_allow {list(allowed)!r}, the only "
            "addresses the service's unit reaches besides loopback; add it there"
        )


def check_db_port_open(listen, ports, db_port: int) -> None:
    """A database host of its own, listening beyond loopback, is reached through its firewall,
    which lets in firewall_tcp_ports alone: without db_port there, this deploy stayed green and
    the service host's, run next, timed out on its migrations, mid-deploy. (A host that also
    runs the service reaches its own address through loopback, which the firewall admits.)"""
    if all(entry.lower() == "localhost" or _is_loopback(entry) for entry in listen):
        return
    try:  # as the firewall reads them ("5432" opens 5432); it refuses a bad list itself
        if not isinstance(ports, list | tuple):
            return
        open_ports = {int(port) for port in ports}
    except (TypeError, ValueError):
        return
    if db_port not in open_ports:
        _fail(
            f"db_listen_addresses {listen!r} serve other hosts on db_port {db_port}: "
            f"firewall_tcp_ports {list(ports)!r} must include it"
        )


def _is_loopback(text: str) -> bool:
    return _is_ip_address(text) and ipaddress.ip_address(text).is_loopback


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_listen_addresses(value) -> None:
    entries = listen_addresses(value)
    # PostgreSQL refuses to start on an entry it cannot bind (a port, a mistyped address).
    if not entries or not all(e == "*" or _address_or_name(e) for e in entries):
        _fail(
            f"db_listen_addresses {value!r} must be addresses or host names without a port "
            '(db_port), e.g. "localhost" or ["localhost", "10.0.0.5"]'
        )


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Settings the unit sets, which win over the env file: one in app_extra_env was written there
# and never read. (DATABASE_URL there replaces the deploy's URL on purpose: the release tests
# point the service at a database that is not there with it.)
_SET_BY_DEPLOY = {
    "ENV_FILE": "in the service's unit",
    "RELEASE_INFO_FILE": "in the service's unit, per release",
}


def check_extra_env(extra) -> None:
    """app_extra_env: NAME -> value, one line each in the env file."""
    if not isinstance(extra, dict):
        _fail(f'app_extra_env {extra!r} must be a mapping, e.g. {{"DB_POOL_SIZE": 10}}')
    for name, value in extra.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            _fail(f"app_extra_env name {name!r} is not a setting name (PLINTH_ is added)")
        if name.upper() in ENV_FROM_DATA:
            _fail(f"app_extra_env {name}: set {ENV_FROM_DATA[name.upper()]} instead")
        if name.upper() in _SET_BY_DEPLOY:
            _fail(f"app_extra_env {name}: the deploy sets it ({_SET_BY_DEPLOY[name.upper()]})")
        if not isinstance(value, str | int | float | bool) or "\n" in str(value):
            _fail(f"app_extra_env {name} {value!r} must be one line of text or a number")
        check_env_text(f"app_extra_env {name}", value)


# Settings the app deploy writes into the service's env file as text.
_ENV_TEXT_KEYS = ("app_environment", "app_models", "app_log_level")


def check_text_setting(key: str, value) -> None:
    """Text, not blank: the env file takes any other value as Python prints it (["iris"] as
    "['iris']", None as "None"), which the service refused on the host, mid-deploy, as a
    model or level of that name."""
    if not isinstance(value, str) or not value.strip():
        _fail(f"{key} {value!r} must be text, e.g. {APP_DEFAULTS[key]!r}")
    check_env_text(key, value)


def check_env_text(key: str, value) -> None:
    """One line, and no `${`: python-dotenv, which reads the env file, expands `${NAME}` from
    the service's environment wherever it stands, quoted or not."""
    if isinstance(value, str) and ("\n" in value or "${" in value):
        _fail(f"{key} {value!r} must be one line without ${{ (the env file's reader expands it)")


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
    data_defaults={
        **ACCESS_DEFAULTS,
        **BASE_DEFAULTS,
        **POSTGRES_DEFAULTS,
        **FIREWALL_DEFAULTS,
        **APP_DEFAULTS,
        **NGINX_DEFAULTS,
        **LOGCAPS_DEFAULTS,
        **BACKUP_DEFAULTS,
        **HARDENING_DEFAULTS,
        **RELEASE_DEFAULTS,
    },
)
def validate() -> None:
    """Every rule, read from the merged data; only reads facts, changes nothing."""
    data = host.data
    # Imported here: data_keys reads every deploy's defaults, tls.py's among them, and tls.py
    # imports this module for InventoryDataError.
    from infra.deploys.data_keys import unknown_keys

    if unknown := unknown_keys(data.dict()):
        _fail(f"unknown data key {', '.join(unknown)}; every key is in a deploy's data_defaults")
    check_domain(data.domain)
    check_email(data.get("tls_acme_email"))
    check_workers(data.app_workers)
    check_db_roles(data.db_user, data.db_owner)
    for key in _NUMBERS:
        check_number(key, data.get(key))
    if data.password_min_days > data.password_max_days:  # both whole numbers by now
        _fail(
            f"password_min_days {data.password_min_days!r} is above password_max_days "
            f"{data.password_max_days!r}"
        )
    for key in _WORDS:
        check_word(key, data.get(key))
    check_db_name(data.db_name)
    for key in _NAME_LISTS:
        check_name_list(key, data.get(key))
    check_backup_dir(data.backup_dir)
    check_timezone(data.timezone)
    for key in _NETWORK_LISTS:
        check_networks(key, data.get(key))
    for key in _SYSTEMD_VALUES:
        check_systemd_value(key, data.get(key))
    check_listen_addresses(data.db_listen_addresses)
    if host_roles() == {"db"}:  # PostgreSQL alone: its clients are on other hosts
        check_db_port_open(
            listen_addresses(data.db_listen_addresses), data.firewall_tcp_ports, data.db_port
        )
    check_db_host(data.db_host)
    if "app" in host_roles():  # where the service's unit runs
        check_db_host_reachable(data.db_host, data.app_ip_address_allow)
    check_extra_env(data.app_extra_env)
    for key in _ENV_TEXT_KEYS:
        check_text_setting(key, data.get(key))
    check_distribution()
