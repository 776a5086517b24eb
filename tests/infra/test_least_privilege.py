"""PostgreSQL least privilege: the owner role owns every object and runs the migrations; the
service role reads and writes rows and can change nothing else; a host deployed before the
owner role existed converges, and a restore keeps (or brings back) these owners and grants."""

from __future__ import annotations

import shlex
import uuid

import pytest

from infra.deploys import layout
from infra.deploys.database_roles import drift_sql
from infra.deploys.postgres import DB_CONNECTION_DEFAULTS
from tests.infra.https_client import IRIS, PREDICT_PATH, request
from tests.infra.test_backups import _restore, _run_backup

pytestmark = pytest.mark.infra

DB = DB_CONNECTION_DEFAULTS["db_name"]
SERVICE = DB_CONNECTION_DEFAULTS["db_user"]
OWNER = DB_CONNECTION_DEFAULTS["db_owner"]


def as_role(host, role: str, password_file: str, sql: str):
    """psql over TCP as `role`, with the password from its file on the host (in PGPASSWORD)."""
    return host.run(
        f'PGPASSWORD="$(cat {password_file})" psql -X -w -q -v ON_ERROR_STOP=1 '
        f"-h 127.0.0.1 -U {role} -d {DB} -tA -c {shlex.quote(sql)}"
    )


def as_service(host, sql: str):
    return as_role(host, SERVICE, layout.DB_PASSWORD_FILE, sql)


def as_postgres(host, sql: str) -> str:
    return host.check_output(
        f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d {DB} -tA -c {shlex.quote(sql)}"
    )


def owners(host) -> dict[str, str]:
    """Every relation in schema public (tables, indexes, sequences) and the database: owner."""
    rows = as_postgres(
        host,
        "SELECT c.relname || '=' || pg_get_userbyid(c.relowner) FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace UNION ALL "
        "SELECT 'database ' || datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
        "WHERE datname = current_database()",
    )
    return dict(line.split("=", 1) for line in rows.splitlines())


def drift(host) -> list[str]:
    return [line for line in as_postgres(host, drift_sql(OWNER, SERVICE)).splitlines() if line]


def stored(host, prediction_id: str):
    """The service role counts the rows with this id (a UUID, hence safe to inline)."""
    return as_service(host, f"SELECT count(*) FROM predictions WHERE id = '{prediction_id}'")  # noqa: S608


def predict(rehearsal) -> str:
    status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    return str(uuid.UUID(body["predictions"][0]["id"]))


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE predictions ADD COLUMN intruder int",
        "CREATE INDEX intruder ON predictions (request_id)",
        "DROP TABLE predictions",
        "TRUNCATE predictions",
        "CREATE TEMPORARY TABLE intruder (id int)",
        f"ALTER TABLE alembic_version OWNER TO {SERVICE}",
        # Only migrations record the schema's revision.
        "UPDATE alembic_version SET version_num = 'forged'",
        "DELETE FROM alembic_version",
        "INSERT INTO alembic_version VALUES ('forged')",
        "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ],
)
def test_service_role_cannot_change_the_schema(host, statement):
    result = as_service(host, f"BEGIN; {statement}; ROLLBACK")
    assert result.rc != 0, f"the service role may: {statement}"
    assert "must be owner" in result.stderr or "permission denied" in result.stderr, result.stderr


def test_service_role_has_no_role_attributes(host):
    rows = as_postgres(
        host,
        "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
        "rolbypassrls FROM pg_roles",
    )
    flags = {row.split("|", 1)[0]: row.split("|", 1)[1] for row in rows.splitlines()}
    assert (flags[SERVICE], flags[OWNER]) == ("t|f|f|f|f|f", "t|f|f|f|f|f")


def test_a_prediction_through_the_api_persists_and_the_service_role_reads_it(host, rehearsal):
    prediction_id = predict(rehearsal)
    found = stored(host, prediction_id)
    assert (found.rc, found.stdout.strip()) == (0, "1"), found.stderr
    status, _, body = request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")
    assert status == 200 and body["id"] == prediction_id


def test_service_role_may_insert_update_and_delete_rows(host):
    result = as_service(
        host,
        "BEGIN; INSERT INTO model_registry (name, version, artifact_sha256, framework) "
        "VALUES ('probe', '0', repeat('0', 64), 'probe'); UPDATE model_registry SET "
        "framework = 'probe2' WHERE name = 'probe'; DELETE FROM model_registry WHERE "
        "name = 'probe'; ROLLBACK",
    )
    assert result.rc == 0, result.stderr


def test_every_object_in_the_database_is_owned_by_the_owner_role(host):
    found = owners(host)
    assert {"predictions", "model_registry", "alembic_version", f"database {DB}"} <= found.keys()
    assert {name: owner for name, owner in found.items() if owner != OWNER} == {}


def test_migrations_ran_as_the_owner_role(host):
    assert owners(host)["alembic_version"] == OWNER
    revision = as_service(host, "SELECT version_num FROM alembic_version")
    assert revision.rc == 0 and revision.stdout.strip(), revision.stderr
    user = host.user(layout.MIGRATION_USER)
    assert user.shell == "/usr/sbin/nologin"
    assert layout.SERVICE_GROUP not in user.groups


def test_a_table_a_later_migration_creates_gets_the_service_grants(host):
    """What the owner creates (as a future migration would) the service role may use, through
    the owner's default privileges."""
    as_postgres(host, f"SET ROLE {OWNER}; CREATE TABLE later_migration (id bigserial PRIMARY KEY)")
    try:
        used = as_service(host, "INSERT INTO later_migration DEFAULT VALUES RETURNING id")
        assert used.rc == 0, used.stderr
        truncate = as_service(host, "TRUNCATE later_migration")
        assert truncate.rc != 0
    finally:
        as_postgres(host, "DROP TABLE IF EXISTS later_migration")


def test_public_may_neither_connect_nor_create_and_nothing_drifted(host):
    assert drift(host) == []
    other = as_postgres(
        host, f"SELECT has_database_privilege('pg_monitor', '{DB}', 'CONNECT, TEMPORARY')"
    )
    assert other == "f"
    assert as_postgres(host, "SELECT has_schema_privilege('pg_monitor', 'public', 'CREATE')") == (
        "f"
    )


def test_owner_password_is_readable_by_root_only_and_not_in_the_env_file(host, first_deploy):
    secret = host.file(layout.DB_OWNER_PASSWORD_FILE)
    assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600)
    password = secret.content_string.strip()
    assert len(password) >= 32
    for user in (layout.SERVICE_USER, layout.MIGRATION_USER):
        assert host.run(f"runuser -u {user} -- cat {layout.DB_OWNER_PASSWORD_FILE}").rc != 0
    env = host.file(layout.ENV_FILE).content_string
    assert password not in env and OWNER not in env
    assert password not in first_deploy.stdout and password not in first_deploy.stderr
    assert host.run(f"ps -eo args | grep -F -f {layout.DB_OWNER_PASSWORD_FILE}").rc == 1
    journal = host.run(
        f"journalctl --no-pager -o cat | grep -c -F -f {layout.DB_OWNER_PASSWORD_FILE}"
    )
    assert journal.stdout.strip() == "0"


def test_owner_role_logs_in_with_its_own_password_only(host):
    assert as_role(host, OWNER, layout.DB_OWNER_PASSWORD_FILE, "SELECT 1").rc == 0
    assert as_role(host, OWNER, layout.DB_PASSWORD_FILE, "SELECT 1").rc != 0


def test_a_host_deployed_before_the_owner_role_converges_and_its_dump_restores(
    host, rehearsal, deploy
):
    """The previous version's state: the service role owns the database and its tables, no
    default privileges. A deploy moves everything to the owner role, a second one changes
    nothing, and a dump taken in the old state restores with the new owners and grants."""
    as_postgres(
        host,
        f"BEGIN; REASSIGN OWNED BY {OWNER} TO {SERVICE}; "
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public REVOKE ALL ON TABLES "
        f"FROM {SERVICE}; ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public "
        f"REVOKE ALL ON SEQUENCES FROM {SERVICE}; GRANT CONNECT, TEMPORARY ON DATABASE {DB} "
        "TO PUBLIC; COMMIT",
    )
    assert set(owners(host).values()) == {SERVICE}
    assert as_service(host, "BEGIN; CREATE TABLE old_ways (id int); ROLLBACK").rc == 0
    old_prediction = predict(rehearsal)
    old_dump = _run_backup(host)

    upgrade = deploy()
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    assert drift(host) == []
    assert set(owners(host).values()) == {OWNER}
    again = deploy()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.totals["success"] == 0, again.stderr[-3000:]

    restored = _restore(old_dump.rsplit("/", 1)[-1])
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert drift(host) == []
    assert set(owners(host).values()) == {OWNER}
    found = stored(host, old_prediction)
    assert (found.rc, found.stdout.strip()) == (0, "1"), found.stderr
    assert as_service(host, "BEGIN; CREATE TABLE old_ways (id int); ROLLBACK").rc != 0
