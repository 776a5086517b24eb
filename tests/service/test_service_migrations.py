"""Migrations: empty -> head -> base -> head, idempotent ``plinth migrate``, readiness at base
and with a database a newer release migrated."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from conftest import libpq
from fastapi.testclient import TestClient
from service_support import subprocess_env
from sqlalchemy import make_url

from service.migrations import downgrade, head_revision, upgrade


def tables(url: str) -> set[str]:
    with psycopg.connect(libpq(url)) as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def revision(url: str) -> str | None:
    with psycopg.connect(libpq(url)) as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def test_upgrade_downgrade_upgrade(migrated_database: str, client: TestClient) -> None:
    url = make_url(migrated_database)
    assert {"predictions", "model_registry", "alembic_version"} <= tables(migrated_database)
    assert revision(migrated_database) == head_revision()
    try:
        downgrade(url, "base")
        assert tables(migrated_database) == {"alembic_version"}
        assert revision(migrated_database) is None
        # The service notices: readiness names the migrations check.
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["migrations"].startswith("failed")
        assert "migrations" in response.json()["detail"]
    finally:
        upgrade(url)
    assert revision(migrated_database) == head_revision()
    assert client.get("/readyz").status_code == 200


def test_plinth_migrate_twice_changes_nothing(migrated_database: str) -> None:
    environment = subprocess_env(PLINTH_DATABASE_URL=migrated_database)
    for _ in range(2):
        result = subprocess.run(
            ["plinth", "migrate"], env=environment, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"plinth: database at revision {head_revision()}"
    assert revision(migrated_database) == head_revision()


def test_migration_url_is_preferred(migrated_database: str) -> None:
    """PLINTH_MIGRATION_DATABASE_URL wins: a broken main URL must not matter to migrate."""
    environment = subprocess_env(
        PLINTH_DATABASE_URL="postgresql+psycopg://nobody:x@127.0.0.1:1/none",
        PLINTH_MIGRATION_DATABASE_URL=migrated_database,
    )
    result = subprocess.run(
        ["plinth", "migrate"], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def assert_migrate_fails_in_one_line(port: int) -> None:
    """`plinth migrate` against 127.0.0.1:`port` ends with one line, exit 1, no password."""
    environment = subprocess_env(
        PLINTH_DATABASE_URL=f"postgresql+psycopg://u:hunter2@127.0.0.1:{port}/x"
    )
    result = subprocess.run(
        ["plinth", "migrate"], env=environment, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 1
    assert result.stderr.startswith("plinth: migration failed: OperationalError")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr


def test_migrate_against_a_dead_server_fails_in_one_line() -> None:
    from throwaway_pg import free_port

    assert_migrate_fails_in_one_line(free_port())


def test_migrate_against_a_server_that_never_answers_fails_in_one_line() -> None:
    """A host that accepts and stays silent (a firewall, a hung server) ends the migration
    after its connect timeout, instead of holding the deploy for the kernel's TCP timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert_migrate_fails_in_one_line(listener.getsockname()[1])


NEWER_REVISION = "9999_from_a_newer_release"


@pytest.fixture
def migrated_by_a_newer_release(migrated_database: str) -> Iterator[str]:
    """The database as a newer release left it (expand/contract) when this one is rolled
    back to: at a revision this release's migrations do not know."""
    with psycopg.connect(libpq(migrated_database), autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = %s", (NEWER_REVISION,))
    try:
        yield migrated_database
    finally:
        with psycopg.connect(libpq(migrated_database), autocommit=True) as connection:
            connection.execute("UPDATE alembic_version SET version_num = %s", (head_revision(),))


def test_a_database_ahead_of_this_release_is_ready(
    migrated_by_a_newer_release: str, client: TestClient
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    migrations = response.json()["checks"]["migrations"]
    assert migrations.startswith("ok: ahead")
    assert NEWER_REVISION in migrations and head_revision() in migrations


def test_migrate_leaves_a_database_ahead_of_it_alone_in_one_line(
    migrated_by_a_newer_release: str,
) -> None:
    """An older release deployed again after a rollback: nothing to migrate, and not a failure
    (the deploy goes on; expand/contract keeps the release compatible), said in one line."""
    environment = subprocess_env(PLINTH_DATABASE_URL=migrated_by_a_newer_release)
    result = subprocess.run(
        ["plinth", "migrate"], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"plinth: the database is at revision {NEWER_REVISION}, ahead of this release (its "
        f"head is {head_revision()}): a newer release migrated it; nothing to migrate"
    ]
    assert "Traceback" not in result.stderr
    assert revision(migrated_by_a_newer_release) == NEWER_REVISION
