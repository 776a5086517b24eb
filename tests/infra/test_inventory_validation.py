"""Bad inventory data stops the deploy before anything changes on a host, with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from infra.deploys import layout
from infra.deploys.app import env_value
from infra.deploys.data_keys import KNOWN_KEYS, documented_keys
from infra.deploys.templating import render
from tests.infra.conftest import DeployRun, run_deploy
from tests.infra.https_client import request

pytestmark = pytest.mark.infra


def _error_lines(run) -> list[str]:
    return [line for line in run.stderr.splitlines() if "inventory data for" in line]


def _assert_refused(run, message: str) -> None:
    assert run.returncode != 0
    lines = _error_lines(run)
    assert len(lines) == 1, run.stderr[-2000:]
    assert message in lines[0]
    assert "Traceback" not in run.stderr
    assert "Starting operation" not in run.stderr  # nothing ran on the host


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param("domain=", "domain is not set", id="missing-domain"),
        pytest.param("domain=example.com", "is a placeholder", id="placeholder-domain"),
        pytest.param("domain=changeme.plinth.test", "is a placeholder", id="changeme-domain"),
        pytest.param("domain=not a name", "is not a valid DNS name", id="malformed-domain"),
        pytest.param(
            "domain=plinth.rehearsal.test.", "without the trailing dot", id="domain-trailing-dot"
        ),
        pytest.param("tls_acme_email=ops-at-plinth", "is not a valid e-mail", id="bad-email"),
        pytest.param("app_workers=0", "app_workers 0 is out of range", id="no-workers"),
        pytest.param("app_workers=500", "out of range", id="too-many-workers"),
        pytest.param("db_owner=plinth", "must not own its tables", id="service-owns-db"),
        pytest.param("db_owner=Plinth-Owner", "not a plain PostgreSQL role", id="bad-role"),
        pytest.param(
            "app_worker=4", "unknown data key app_worker (did you mean app_workers?)", id="typo"
        ),
        # Values that land in configuration files as they are: each would break one.
        pytest.param("db_port=70000", "db_port 70000 must be a whole number, 1..65535", id="port"),
        pytest.param("db_port=abc", "db_port 'abc' must be a whole number", id="port-not-number"),
        pytest.param("nginx_send_timeout=0", "must be a whole number, at least 1", id="timeout"),
        pytest.param("db_name=plinth;drop", "is not a plain PostgreSQL name", id="db-name"),
        pytest.param("nginx_predict_rate=fast", "is not an nginx rate", id="rate"),
        pytest.param("nginx_predict_rate=0r/s", "is not an nginx rate", id="rate-zero"),
        pytest.param(  # a string: the nginx deploy computes with it
            'nginx_upstream_keepalive="16"', "must be a whole number", id="number-as-string"
        ),
        pytest.param(
            'db_listen_addresses=["localhost", "10.0.0.5\'"]',
            "db_listen_addresses",
            id="listen-address-quote",
        ),
        pytest.param(
            'db_listen_addresses={"host": "10.0.0.5"}', "must be addresses", id="listen-mapping"
        ),
        pytest.param("nginx_client_max_body_size=1 GB", "is not an nginx size", id="size"),
        pytest.param(  # nginx refuses a size past its off_t
            "nginx_client_max_body_size=99999999999999999999m", "is not an nginx size", id="huge"
        ),
        pytest.param("timezone=../../etc/passwd", "is not a zone", id="timezone"),
        pytest.param(
            "db_client_networks=10.0.0.0/8", "must be a list of addresses", id="list-as-string"
        ),
        pytest.param(
            'db_client_networks=["10.0.0.5"]', "needs its prefix length", id="hba-without-prefix"
        ),
        pytest.param(
            'nginx_metrics_allow=["10.0.0.300"]', "is not an IP address or network", id="address"
        ),
        pytest.param(  # python-dotenv would put the service's own $HOME there
            'app_extra_env={"DB_POOL_SIZE": "${HOME}"}', "without ${", id="env-expansion"
        ),
        pytest.param("app_models=iris,${PLINTH_MODELS}", "without ${", id="env-expansion-models"),
        pytest.param(  # a long name with a port once took the name's pattern minutes to refuse
            "db_host=database01.production.example.com:5432", "without a port", id="db-host-port"
        ),
        pytest.param("db_host=10.0.0.256", "must be a host name or an IP", id="db-host-bad-ip"),
        pytest.param("db_host=[fd00::5]", "or brackets", id="db-host-brackets"),
        pytest.param(  # pg_hba.conf refuses a netmask: PostgreSQL would not start
            'db_client_networks=["10.0.0.0/255.0.0.0"]', "prefix as a length", id="netmask"
        ),
        pytest.param(  # systemd ignores a scoped address in IPAddressAllow=
            'app_ip_address_allow=["fe80::1%eth0"]', "prefix as a length", id="scoped-address"
        ),
        pytest.param(  # hidden from the backup unit by ProtectHome=: every backup would fail
            "backup_dir=/home/backups/plinth", "sandbox cannot write", id="backup-dir-home"
        ),
        pytest.param(  # /var/run is /run, a tmpfs: the dumps would go at the next reboot
            "backup_dir=/var/run/plinth", "sandbox cannot write", id="backup-dir-var-run"
        ),
        pytest.param(  # the unit's private /tmp: dumps would land where nobody looks
            "backup_dir=/var/tmp/plinth", "sandbox cannot write", id="backup-dir-tmp"
        ),
        pytest.param('backup_retention_days="two weeks"', "must be a whole number", id="retention"),
        pytest.param(  # unquoted in the backup script: `db` would run as a command
            'backup_dir="/var/backups/plinth db"', "is not an absolute path", id="backup-dir"
        ),
        pytest.param(
            'backup_on_calendar="daily 02:30"', "systemd-analyze calendar refuses", id="calendar"
        ),
        pytest.param(
            "backup_randomized_delay=soon", "systemd-analyze timespan refuses", id="timespan"
        ),
        pytest.param("release_health_timeout=abc", "must be a whole number", id="health-timeout"),
        pytest.param("shell_idle_timeout_seconds=15m", "must be a whole number", id="idle-timeout"),
        pytest.param('app_extra_env=["DB_POOL_SIZE"]', "must be a mapping", id="env-not-mapping"),
        pytest.param('app_extra_env={"DB POOL": 1}', "is not a setting name", id="env-name"),
        # sshd -t takes these and then lets no one in: the host would be locked out.
        pytest.param("ssh_max_sessions=0", "at least 2", id="ssh-no-sessions"),
        pytest.param("ssh_max_auth_tries=0", "at least 1", id="ssh-no-auth-tries"),
        # PostgreSQL cannot bind these and would not start after the restart.
        pytest.param("db_listen_addresses=0.0.0.0:5432", "without a port", id="listen-port"),
        pytest.param('db_listen_addresses=["10.0.0.256"]', "without a port", id="listen-bad-ip"),
        pytest.param("db_max_connections=300000", "10..262143", id="max-connections"),
        pytest.param(  # fine on a fresh host, then a traceback on every later deploy
            'apt_cache_seconds="3600"', "must be a whole number", id="apt-cache-string"
        ),
        pytest.param("locale=en_US.utf8", "as /etc/locale.gen names it", id="locale"),
        pytest.param(  # /etc/localtime would dangle and the host stay on UTC, quietly
            "timezone=Europe/Berln", "is not a zone of the tz database", id="timezone-typo"
        ),
        pytest.param(  # read one character at a time: modules "u", "s", "b"... blocked
            "blocked_kernel_modules=usb-storage", "must be a list of kernel modules", id="modules"
        ),
        pytest.param('hardening_packages=["lynis", "bad name"]', "list of packages", id="pkgs"),
        pytest.param("login_umask=27", "an octal umask in quotes", id="umask-number"),
        pytest.param("password_min_days=400", "is above password_max_days", id="password-ages"),
        pytest.param("deploy_user=Deploy User", "a plain user name", id="deploy-user"),
        pytest.param(  # past app_workers' own range check
            'app_extra_env={"workers": 64}', "set app_workers instead", id="env-overrides-key"
        ),
    ],
)
def test_bad_data_is_refused_before_any_change(first_deploy, host, deploy, data, message):
    before = host.check_output(f"stat -c %Y {layout.ENV_FILE} {layout.NGINX_SITE}")
    run = deploy("--data", data)
    _assert_refused(run, message)
    assert host.check_output(f"stat -c %Y {layout.ENV_FILE} {layout.NGINX_SITE}") == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_unknown_distribution_is_refused(tmp_path, deploy):
    """The control machine as the host (@local, --dry: nothing can run) under a fake
    os-release, bind-mounted in a private mount namespace."""
    (tmp_path / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
    inventory = tmp_path / "inventory.py"
    inventory.write_text('app = [("@local", {"domain": "plinth.test"})]\n')
    script = (
        f"mount --bind {tmp_path / 'os-release'} /etc/os-release && "
        f"{sys.executable} -m pyinfra -y --dry {inventory} infra/deploys/site.py"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=os.fspath(__import__("pathlib").Path(__file__).resolve().parents[2]),
        capture_output=True,
        text=True,
    )
    _assert_refused(result, "is not supported (only Debian 12 (bookworm), Debian 13 (trixie))")


# Entries that run only the checks on the data, so that no host is needed (see _dry_run).
_VALIDATE_ONLY = "from infra.deploys.validate import validate\n\nvalidate()\n"
_TLS_ONLY = """from pyinfra import host
from pyinfra.api import deploy

from infra.deploys.tls import TLS_DEFAULTS, tls_settings


@deploy("TLS settings", data_defaults=TLS_DEFAULTS)
def settings():
    tls_settings(host.data)


settings()
"""


def _dry_run(tmp_path, data: dict, entry: str = _VALIDATE_ONLY) -> DeployRun:
    """`entry` with `data` on this machine (@local, --dry: nothing runs), as the deploy reads it."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"app = [('@local', {{'domain': 'plinth.test', **{data!r}}})]\n")
    (tmp_path / "entry.py").write_text(entry)
    return run_deploy(dry=True, inventory=str(inventory), entry=str(tmp_path / "entry.py"))


def _assert_accepted(run) -> None:
    # The last check is this machine's distribution (which may be another than the hosts').
    lines = [line for line in _error_lines(run) if "is not supported" not in line]
    assert lines == [] and "Traceback" not in run.stderr, run.stderr[-2000:]


_ACME = {"tls_mode": "acme", "tls_acme_email": "ops@plinth.test"}


@pytest.mark.parametrize(
    ("data", "entry", "message"),
    [
        pytest.param(  # nginx refuses `limit_req ... burst=0`: the deploy would stop midway
            {"nginx_predict_burst": 0}, _VALIDATE_ONLY, "nginx_predict_burst 0", id="burst-zero"
        ),
        pytest.param(  # read one letter at a time: packages "h", "t", "o", "p"
            {"base_packages": "htop"}, _VALIDATE_ONLY, "list of packages", id="base-packages"
        ),
        # The superuser (pg_hba.conf's `local all postgres peer` comes first), or names
        # PostgreSQL keeps for itself.
        pytest.param({"db_user": "postgres"}, _VALIDATE_ONLY, "db_user 'postgres'", id="su"),
        pytest.param({"db_owner": "pg_app"}, _VALIDATE_ONLY, "db_owner 'pg_app'", id="pg-role"),
        pytest.param({"db_user": "public"}, _VALIDATE_ONLY, "db_user 'public'", id="public"),
        pytest.param(
            {"db_owner": "current_user"}, _VALIDATE_ONLY, "db_owner 'current_user'", id="current"
        ),
        # Keywords where pg_hba.conf names the database.
        pytest.param({"db_name": "all"}, _VALIDATE_ONLY, "db_name 'all'", id="db-name-all"),
        pytest.param(
            {"db_name": "replication"}, _VALIDATE_ONLY, "db_name 'replication'", id="replication"
        ),
        # The service's unit reaches no address but these (IPAddressDeny=any).
        pytest.param(
            {"db_host": "10.0.0.5"}, _VALIDATE_ONLY, "app_ip_address_allow", id="remote-db"
        ),
        pytest.param(
            {"db_host": "10.0.0.5", "app_ip_address_allow": ["10.0.1.0/24"]},
            _VALIDATE_ONLY,
            "app_ip_address_allow",
            id="remote-db-elsewhere",
        ),
        pytest.param(
            {"db_host": "db.internal"}, _VALIDATE_ONLY, "database host's addresses", id="db-name"
        ),
        # The health check goes to 127.0.0.1: the deploy would stay green, clients dropped.
        pytest.param(
            {**_ACME, "firewall_tcp_ports": [80, 5432]}, _TLS_ONLY, "443", id="acme-without-443"
        ),
        pytest.param(
            {"tls_mode": "self-signed", "firewall_tcp_ports": [80]},
            _TLS_ONLY,
            "443",
            id="self-signed-without-443",
        ),
        # A trailing newline (a value read from a file) lands in the file as a line break:
        # pg_hba.conf that PostgreSQL refuses at its next start, a unit, a script, a command.
        pytest.param(
            {"db_name": "plinth\n"}, _VALIDATE_ONLY, "db_name 'plinth\\n'", id="newline-db-name"
        ),
        pytest.param(
            {"db_owner": "owner\n"}, _VALIDATE_ONLY, "db_owner 'owner\\n'", id="newline-role"
        ),
        pytest.param(
            {"domain": "plinth.test\n"},
            _VALIDATE_ONLY,
            "domain 'plinth.test\\n'",
            id="newline-domain",
        ),
        pytest.param(
            {"backup_dir": "/var/backups/plinth\n"},
            _VALIDATE_ONLY,
            "backup_dir '/var/backups/plinth\\n'",
            id="newline-backup-dir",
        ),
        pytest.param(
            {"base_packages": ["curl\n", "sudo"]}, _VALIDATE_ONLY, "base_packages", id="newline-pkg"
        ),
        # The unit sets it, and it wins over the env file: written there and never read.
        pytest.param(
            {"app_extra_env": {"env_file": "/etc/other.env"}},
            _VALIDATE_ONLY,
            "app_extra_env env_file: the deploy sets it",
            id="env-set-by-unit",
        ),
        pytest.param(
            {"app_extra_env": {"DB_POOL_SIZE\n": 5}},
            _VALIDATE_ONLY,
            "is not a setting name",
            id="newline-env-name",
        ),
        pytest.param(  # ABSOLUTE_PATH, which the TLS deploy checks it with
            {**_ACME, "tls_acme_webroot": "/var/www/letsencrypt\n"},
            _TLS_ONLY,
            "tls_acme_webroot",
            id="newline-webroot",
        ),
        pytest.param(
            {**_ACME, "tls_domains": ["plinth.test\n"]}, _TLS_ONLY, "TLS domain", id="newline-tls"
        ),
        pytest.param(
            {**_ACME, "tls_acme_email": "ops@plinth.test\n"},
            _TLS_ONLY,
            "tls_acme_email",
            id="newline-email",
        ),
        pytest.param(
            {"tls_cert_name": "plinth\n"}, _TLS_ONLY, "tls_cert_name", id="newline-cert-name"
        ),
        pytest.param(  # an add_header line in nginx's file, broken in two
            {"tls_referrer_policy": "no-referrer\n"},
            _TLS_ONLY,
            "tls_referrer_policy",
            id="newline-header",
        ),
        # A list where the env file takes text: written as "['iris']", which the service
        # reads as a model of that name and refuses on the host, mid-deploy.
        pytest.param(
            {"app_models": ["iris"]},
            _VALIDATE_ONLY,
            "app_models ['iris'] must be",
            id="models-list",
        ),
        pytest.param(
            {"app_log_level": None},
            _VALIDATE_ONLY,
            "app_log_level None must be",
            id="log-level-none",
        ),
        # Past the service's own bounds (service/config.py): its check on the host would refuse
        # them mid-deploy, naming PLINTH_* rather than the key.
        pytest.param(
            {"app_max_batch_size": 10_001}, _VALIDATE_ONLY, "1..10000", id="batch-above-service"
        ),
        pytest.param(
            {"app_timeout_seconds": 3601}, _VALIDATE_ONLY, "1..3600", id="timeout-above-service"
        ),
    ],
)
def test_bad_data_is_refused_without_a_host(tmp_path, data, entry, message):
    _assert_refused(_dry_run(tmp_path, data, entry), message)


_DB_FOR_OTHERS = {"db_listen_addresses": ["10.0.0.5"], "db_client_networks": ["10.0.0.6/32"]}


@pytest.mark.parametrize(
    ("group", "data", "refused"),
    [
        # The firewall lets in firewall_tcp_ports alone: this deploy stayed green and the
        # service host's timed out on its migrations, mid-deploy.
        pytest.param("db", {**_DB_FOR_OTHERS, "firewall_tcp_ports": [22]}, True, id="closed"),
        pytest.param("db", {**_DB_FOR_OTHERS, "firewall_tcp_ports": ["5432"]}, False, id="open"),
        pytest.param("db", {"firewall_tcp_ports": []}, False, id="loopback-only"),
        pytest.param(
            "db",
            {"db_listen_addresses": "localhost,127.0.0.1", "firewall_tcp_ports": []},
            False,
            id="loopback-addresses",
        ),
        pytest.param("app", {**_DB_FOR_OTHERS, "firewall_tcp_ports": [443]}, False, id="app-only"),
        # Both roles: the service reaches the host's own address through loopback, which the
        # firewall admits (tests/infra/test_database_over_the_network.py).
        pytest.param(
            "all_in_one", {**_DB_FOR_OTHERS, "firewall_tcp_ports": [443]}, False, id="both-roles"
        ),
    ],
)
def test_a_database_for_other_hosts_needs_its_port_open(tmp_path, group, data, refused):
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"{group} = [('@local', {{'domain': 'plinth.test', **{data!r}}})]\n")
    (tmp_path / "entry.py").write_text(_VALIDATE_ONLY)
    run = run_deploy(dry=True, inventory=str(inventory), entry=str(tmp_path / "entry.py"))
    if refused:
        _assert_refused(run, "db_listen_addresses ['10.0.0.5'] serve other hosts on db_port 5432")
    else:
        assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize(
    ("data", "entry"),
    [
        pytest.param({"nginx_predict_burst": 1}, _VALIDATE_ONLY, id="burst-one"),
        pytest.param(
            {"db_name": "all_rows", "db_user": "postgresql", "db_owner": "app_pg_owner"},
            _VALIDATE_ONLY,
            id="names-near-reserved-ones",
        ),
        pytest.param(  # as infra/inventories/rehearsal_split.py sets them on the app host
            {"db_host": "10.213.7.2", "app_ip_address_allow": ["10.213.7.2"]},
            _VALIDATE_ONLY,
            id="split-rehearsal",
        ),
        pytest.param(
            {"db_host": "fd00::5", "app_ip_address_allow": ["10.0.0.0/8", "fd00::/64"]},
            _VALIDATE_ONLY,
            id="db-in-network",
        ),
        pytest.param(
            {"db_host": "db.internal", "app_ip_address_allow": ["10.0.0.5"]},
            _VALIDATE_ONLY,
            id="db-host-name",
        ),
        pytest.param({"db_host": "::1"}, _VALIDATE_ONLY, id="loopback"),
        pytest.param({"db_host": "localhost"}, _VALIDATE_ONLY, id="localhost"),
        pytest.param(  # the firewall reads them as numbers too
            {**_ACME, "firewall_tcp_ports": ["80", "443"]}, _TLS_ONLY, id="ports-as-strings"
        ),
        pytest.param({"tls_mode": "off", "firewall_tcp_ports": [5432]}, _TLS_ONLY, id="tls-off"),
        pytest.param(  # the service's own upper bounds are fine
            {"app_max_batch_size": 10_000, "app_graceful_timeout_seconds": 3600},
            _VALIDATE_ONLY,
            id="service-bounds",
        ),
    ],
)
def test_good_data_passes_without_a_host(tmp_path, data, entry):
    _assert_accepted(_dry_run(tmp_path, data, entry))


@pytest.mark.parametrize(
    ("data", "line"),
    [
        pytest.param("app_log_level=verbose", "PLINTH_LOG_LEVEL", id="log-level"),
        pytest.param("app_models=iris,nosuch", "PLINTH_MODELS", id="unknown-model"),
    ],
)
def test_a_setting_the_service_refuses_leaves_the_running_settings(
    first_deploy, host, deploy, rehearsal, data, line
):
    """Settings only the service can judge (a log level, a model it must load) are checked on
    the host by the release about to serve (`plinth check-config`) before the env file is
    replaced: the deploy fails with the service's own line, and the file the workers read (a
    reload starts new ones) stays as it was, so the service keeps serving."""
    before = host.check_output(f"sha256sum {layout.ENV_FILE}")
    try:
        run = deploy("--data", data)
        assert run.returncode != 0
        assert line in run.stderr and "left as it was" in run.stderr, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        assert host.check_output(f"sha256sum {layout.ENV_FILE}") == before
        assert not host.file(f"{layout.ENV_FILE}.tmp").exists
        assert host.run(f"systemctl reload {layout.SERVICE_UNIT}").rc == 0  # fresh workers
        time.sleep(1)  # the old workers leave; the new ones read the env file
        deadline = time.monotonic() + 15
        while (status := request(rehearsal, "GET", "/readyz")[0]) != 200:
            assert time.monotonic() < deadline, f"/readyz {status} after the reload"
            time.sleep(0.5)
    finally:
        restored = deploy()
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert host.check_output(f"sha256sum {layout.ENV_FILE}") == before


@pytest.mark.parametrize(
    "value",
    ["iris #primary", "'quoted'", '"double"', "it's", r"a\nb", "back\\slash", "trailing  ", "$X"],
)
def test_env_file_values_reach_the_service_as_written(tmp_path, value):
    """The env file as the app deploy renders it, read by python-dotenv as pydantic-settings
    reads it for the service: each value comes back unchanged (unquoted, a ` #comment` was cut
    off, quotes taken away, trailing spaces dropped)."""
    from dotenv import dotenv_values

    env_file = tmp_path / "plinth.env"
    env_file.write_text(render("app/plinth.env.j2", env={"X": env_value(value)}))
    assert dotenv_values(env_file)["PLINTH_X"] == value


def test_every_data_key_has_its_default_and_a_comment_in_one_place():
    """`make data-keys` reads them from the deploys' data_defaults: each key once, each with
    the comment that says what it is for."""
    rows = documented_keys()
    keys = [key for key, *_ in rows]
    assert sorted(keys) == sorted(KNOWN_KEYS)  # each once, none missing
    assert [key for key, _, _, comment in rows if not comment] == []
