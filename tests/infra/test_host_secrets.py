"""The database password: generated on the host, and nowhere it could leak."""

from __future__ import annotations

import pytest

from infra.deploys import layout
from tests.infra.https_client import request

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


def test_a_password_made_during_a_deploy_shows_in_no_output_command_line_or_log(
    host, rehearsal, deploy
):
    """The checks above look at a host after its deploy, when the commands that handled the
    password are gone, and at output that made no password when the host was deployed before.
    Here the deploy makes one while it is watched: its password file is removed, so the next
    deploy generates a new password, sets the role's and renders the env file, at pyinfra's
    most verbose (-vvv: every command and its output), with every process's command line
    sampled on the host throughout."""
    sampler, samples = "plinth-test-argv-sampler", "/run/plinth-test-argv.log"
    host.run(f"rm -f {samples}")
    assert (
        host.run(
            f"systemd-run --unit={sampler} -p RuntimeMaxSec=300 sh -c "
            f"'while :; do ps -eo args >> {samples}; sleep 0.02; done'"
        ).rc
        == 0
    )
    try:
        assert host.run(f"rm {layout.DB_PASSWORD_FILE}").rc == 0
        run = deploy("-vvv")
    finally:
        host.run(f"systemctl stop {sampler}")
    assert run.returncode == 0, run.stderr[-3000:]
    password = host.file(layout.DB_PASSWORD_FILE).content_string.strip()
    assert len(password) >= 32
    assert "ALTER ROLE" in run.stdout + run.stderr  # the step ran, and -vvv showed it
    assert password not in run.stdout and password not in run.stderr
    assert int(host.check_output(f"grep -c . {samples}")) > 100  # sampled all along
    assert host.run(f"grep -q -F -f {layout.DB_PASSWORD_FILE} {samples}").rc == 1
    journal = host.run(f"journalctl --no-pager -o cat | grep -c -F -f {layout.DB_PASSWORD_FILE}")
    assert journal.stdout.strip() == "0"
    status, _, body = request(rehearsal, "GET", "/readyz")  # the service uses the new one
    assert status == 200, body
    host.run(f"rm -f {samples}")
