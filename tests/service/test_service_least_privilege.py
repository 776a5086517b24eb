"""Two roles, as deployed: migrations log in as the owner role (PLINTH_MIGRATION_DATABASE_URL),
the service as a role with row access only (PLINTH_DATABASE_URL). Migrating needs the owner,
serving works with the row grants alone, and the service role cannot change the schema."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from conftest import libpq
from fastapi.testclient import TestClient
from service_support import IRIS_INPUT, subprocess_env
from sqlalchemy import make_url

from service.app import create_app
from service.config import Settings
from service.migrations import head_revision


@dataclass(frozen=True)
class TwoRoles:
    owner_url: str
    service_url: str
    admin_url: str  # the test server's superuser, in the same database
    migrate_as_service: subprocess.CompletedProcess[str]
    migrate_as_owner: subprocess.CompletedProcess[str]


def _migrate(**environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["plinth", "migrate"],
        env=subprocess_env(**environment),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def two_roles(database_url: str) -> Iterator[TwoRoles]:
    """A fresh database owned by an owner role, a service role with the deploy's grants
    (CONNECT, USAGE on public, row privileges through the owner's default privileges); then
    `plinth migrate` with the service role alone, and with both URLs as the deploy sets them."""
    suffix = secrets.token_hex(4)
    owner, service, name = f"lp_owner_{suffix}", f"lp_service_{suffix}", f"lp_{suffix}"
    passwords = {owner: secrets.token_hex(16), service: secrets.token_hex(16)}
    admin = make_url(database_url)
    with psycopg.connect(libpq(admin.set(database="postgres")), autocommit=True) as connection:
        for role, password in passwords.items():
            connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        connection.execute(f"CREATE DATABASE {name} OWNER {owner}")
    admin_url = admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(libpq(admin_url), autocommit=True) as connection:
        for statement in (
            f"REVOKE ALL ON DATABASE {name} FROM PUBLIC",
            f"GRANT CONNECT ON DATABASE {name} TO {service}",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            f"GRANT USAGE, CREATE ON SCHEMA public TO {owner}",
            f"GRANT USAGE ON SCHEMA public TO {service}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {service}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            f"GRANT USAGE, SELECT ON SEQUENCES TO {service}",
        ):
            connection.execute(statement)

    def url(role: str) -> str:
        return admin.set(username=role, password=passwords[role], database=name).render_as_string(
            hide_password=False
        )

    as_service = _migrate(PLINTH_DATABASE_URL=url(service))
    as_owner = _migrate(PLINTH_DATABASE_URL=url(service), PLINTH_MIGRATION_DATABASE_URL=url(owner))
    yield TwoRoles(url(owner), url(service), admin_url, as_service, as_owner)

    with psycopg.connect(libpq(admin.set(database="postgres")), autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for role in passwords:
            connection.execute(f"DROP ROLE IF EXISTS {role}")


def test_migrating_with_the_service_role_alone_is_refused_in_one_line(two_roles: TwoRoles):
    result = two_roles.migrate_as_service
    assert result.returncode == 1
    assert result.stderr.startswith("plinth: migration failed: ProgrammingError")
    assert "permission denied for schema public" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_migrations_run_as_the_owner_and_it_owns_every_table(two_roles: TwoRoles):
    result = two_roles.migrate_as_owner
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"plinth: database at revision {head_revision()}"
    owner = make_url(two_roles.owner_url).username
    with psycopg.connect(libpq(two_roles.admin_url)) as connection:
        owners = dict(
            connection.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        )
    assert {"predictions", "model_registry", "alembic_version"} <= owners.keys()
    assert set(owners.values()) == {owner}


def test_the_service_serves_with_row_privileges_only(two_roles: TwoRoles):
    settings = Settings(environment="testing", database_url=two_roles.service_url, models=["iris"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200  # reads alembic_version; model upserted
        response = client.post("/v1/models/iris/predict", json={"inputs": [IRIS_INPUT]})
        assert response.status_code == 200, response.text
        prediction_id = response.json()["predictions"][0]["id"]
        assert client.get(f"/v1/predictions/{prediction_id}").status_code == 200
    with psycopg.connect(libpq(two_roles.service_url)) as connection:
        row = connection.execute(
            "SELECT model_name FROM predictions WHERE id = %s", (uuid.UUID(prediction_id),)
        ).fetchone()
    assert row == ("iris",)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE predictions ADD COLUMN intruder int",
        "CREATE INDEX intruder ON predictions (request_id)",
        "DROP TABLE predictions",
        "TRUNCATE predictions",
        "CREATE TEMPORARY TABLE intruder (id int)",
        # The owner's default privileges reach the version table too; migrate takes them back.
        "UPDATE alembic_version SET version_num = 'forged'",
        "DELETE FROM alembic_version",
        "INSERT INTO alembic_version VALUES ('forged')",
    ],
)
def test_the_service_role_cannot_change_the_schema(two_roles: TwoRoles, statement: str):
    assert two_roles.migrate_as_owner.returncode == 0
    with (
        psycopg.connect(libpq(two_roles.service_url)) as connection,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        connection.execute(statement)


@pytest.mark.parametrize("grant", ["INSERT", "SELECT"])
def test_a_role_that_lost_a_grant_is_not_ready_and_gets_503s(two_roles: TwoRoles, grant: str):
    """Readiness checks the grants the API needs, not only that the database answers; the
    request that needs the lost grant gets a 503 problem with a retry, never a 500."""
    assert two_roles.migrate_as_owner.returncode == 0
    service_role = make_url(two_roles.service_url).username
    settings = Settings(environment="testing", database_url=two_roles.service_url, models=["iris"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        stored = client.post("/v1/models/iris/predict", json={"inputs": [IRIS_INPUT]})
        assert stored.status_code == 200, stored.text
        prediction_id = stored.json()["predictions"][0]["id"]
        with psycopg.connect(libpq(two_roles.owner_url), autocommit=True) as connection:
            connection.execute(f"REVOKE {grant} ON predictions FROM {service_role}")
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            expected = f"failed: this role lacks {grant} on predictions (grants)"
            assert ready.json()["checks"]["database"] == expected
            refused = (
                client.post("/v1/models/iris/predict", json={"inputs": [IRIS_INPUT]})
                if grant == "INSERT"
                else client.get(f"/v1/predictions/{prediction_id}")
            )
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["retry-after"].isdigit()
        finally:
            with psycopg.connect(libpq(two_roles.owner_url), autocommit=True) as connection:
                connection.execute(f"GRANT {grant} ON predictions TO {service_role}")
        assert client.get("/readyz").status_code == 200


def test_the_url_s_own_options_are_kept(two_roles: TwoRoles):
    """libpq takes one `options` string: the service's statement timeout goes after the URL's
    (a search_path, say) instead of replacing them, as `plinth migrate` keeps them too."""
    from service.database import async_connector, build_engine

    url = f"{two_roles.service_url}?options=-csearch_path%3Dplinth_elsewhere"
    settings = Settings(environment="testing", database_url=url, db_statement_timeout_ms=1234)
    engine = build_engine(settings)
    try:
        with engine.connect() as connection:
            shown = connection.exec_driver_sql("SHOW search_path").scalar()
            timeout = connection.exec_driver_sql("SHOW statement_timeout").scalar()
        assert (shown, timeout) == ("plinth_elsewhere", "1234ms")

        async def writer_settings() -> tuple[str, str]:
            async with await async_connector(engine, settings)() as connection:
                cursor = await connection.execute(
                    "SELECT current_setting('search_path'), current_setting('statement_timeout')"
                )
                return await cursor.fetchone()

        assert asyncio.run(writer_settings()) == ("plinth_elsewhere", "1234ms")
    finally:
        engine.dispose()
