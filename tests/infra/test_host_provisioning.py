"""What the deploy leaves on the host: packages, services, listeners, users, files."""

from __future__ import annotations

import json

import pytest

from infra.deploys import layout
from infra.deploys.base import BASE_DEFAULTS

pytestmark = pytest.mark.infra


@pytest.mark.parametrize("package", ["postgresql", "nginx", "python3-venv", "tzdata"])
def test_packages_installed(host, package):
    assert host.package(package).is_installed


@pytest.mark.parametrize(
    "unit", ["postgresql", "nginx", layout.SOCKET_UNIT, layout.SERVICE_UNIT, "systemd-journald"]
)
def test_services_enabled_and_running(host, unit):
    service = host.service(unit)
    assert service.is_running
    if unit != "systemd-journald":
        assert service.is_enabled


def _tcp_listeners(host) -> list[str]:
    return host.check_output("ss -Hltne").splitlines()


def test_postgresql_listens_only_on_loopback_and_its_socket(host):
    lines = [line for line in _tcp_listeners(host) if ":5432 " in line]
    assert lines, "PostgreSQL is not listening on TCP 5432"
    for line in lines:
        local = line.split()[3]
        assert local.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]"), line
    assert host.socket("unix:///var/run/postgresql/.s.PGSQL.5432").is_listening


def test_postgresql_configuration_is_readable_by_postgres_only(host):
    paths = host.check_output("find /etc/postgresql -type f -name '*.conf'").split()
    assert any(path.endswith("/postgresql.conf") for path in paths), paths
    for path in paths:
        config = host.file(path)
        assert (config.user, config.group) == ("postgres", "postgres"), path
        assert not config.mode & 0o007, f"{path} is {config.mode:o}: others may read it"


def test_gunicorn_listens_only_on_its_unix_socket(host):
    uid = host.user(layout.SERVICE_USER).uid
    assert not [line for line in _tcp_listeners(host) if f" uid:{uid} " in line]
    assert host.socket(f"unix://{layout.SOCKET_PATH}").is_listening
    socket_file = host.file(layout.SOCKET_PATH)
    assert (socket_file.user, socket_file.group, socket_file.mode) == (
        "root",
        layout.NGINX_GROUP,
        0o660,
    )


def test_nginx_listens_on_port_80(host):
    assert host.socket("tcp://0.0.0.0:80").is_listening


def test_service_user_has_no_login_shell(host):
    user = host.user(layout.SERVICE_USER)
    assert user.shell == "/usr/sbin/nologin"
    assert user.group == layout.SERVICE_GROUP


def test_env_file_is_root_owned_and_readable_by_the_service_group_only(host):
    env = host.file(layout.ENV_FILE)
    assert (env.user, env.group, env.mode) == ("root", layout.SERVICE_GROUP, 0o640)
    assert layout.DB_PASSWORD_PLACEHOLDER not in env.content_string
    secret = host.file(layout.DB_PASSWORD_FILE)
    assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600)


def test_current_release_is_an_immutable_root_owned_directory(host):
    current = host.file(layout.CURRENT_LINK)
    assert current.is_symlink
    target = current.linked_to
    assert target.startswith(f"{layout.RELEASES_DIR}/")
    for path in (layout.APP_ROOT, layout.RELEASES_DIR, target, f"{target}/venv"):
        directory = host.file(path)
        assert (directory.user, directory.group) == ("root", "root"), path
        assert directory.mode & 0o022 == 0, f"{path} is group/world writable"
    info = json.loads(host.file(f"{target}/release.json").content_string)
    assert {"version", "git_revision", "build_time"} <= info.keys()
    assert host.file(f"{target}/{layout.INSTALLED_MARKER}").exists


def test_journal_is_persistent_and_capped(host):
    assert host.file("/var/log/journal").is_directory
    dropin = host.file(layout.JOURNALD_DROPIN).content_string
    assert "Storage=persistent" in dropin
    assert f"SystemMaxUse={BASE_DEFAULTS['journald_system_max_use']}\n" in dropin


def test_host_runs_in_utc(host):
    assert host.check_output("date +%Z") == "UTC"


def test_service_unit_sandbox_scores_at_most_1_5(host):
    unit = f"{layout.SYSTEMD_UNIT_DIR}/{layout.SERVICE_UNIT}"
    result = host.run(f"systemd-analyze security --offline=yes --threshold=15 {unit}")
    assert result.rc == 0, result.stdout[-600:]
