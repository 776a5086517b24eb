"""The database password: generated on the host, and nowhere it could leak."""

from __future__ import annotations

import pytest

from infra.deploys import layout

pytestmark = pytest.mark.infra


def test_database_role_has_no_superuser_createdb_or_createrole(host):
    flags = host.check_output(
        "runuser -u postgres -- psql -tAc "
        "\"select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = 'plinth'\""
    )
    assert flags == "f|f|f"


def test_service_role_logs_in_with_scram_and_the_generated_password(host):
    hba = host.check_output("runuser -u postgres -- psql -tAc 'show hba_file'")
    rules = host.file(hba).content_string
    assert "trust" not in rules and " md5" not in rules
    method = host.check_output(
        "runuser -u postgres -- psql -tAc "
        "\"select left(rolpassword, 13) from pg_authid where rolname = 'plinth'\""
    )
    assert method == "SCRAM-SHA-256"


def test_password_is_in_no_process_command_line(host):
    # grep reads the password from the file: it is on no command line here either.
    result = host.run(f"ps -eo args | grep -F -f {layout.DB_PASSWORD_FILE}")
    assert result.rc == 1, "the database password appears in a process command line"


def test_password_is_in_no_journal_line(host):
    result = host.run(f"journalctl --no-pager -o cat | grep -c -F -f {layout.DB_PASSWORD_FILE}")
    assert result.stdout.strip() == "0"


def test_password_is_not_in_the_deploy_output(host, first_deploy):
    password = host.file(layout.DB_PASSWORD_FILE).content_string.strip()
    assert len(password) >= 32
    assert password not in first_deploy.stdout
    assert password not in first_deploy.stderr
