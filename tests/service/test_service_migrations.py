"""Migrations: empty -> head -> base -> head, idempotent ``plinth migrate``, readiness at base."""

from __future__ import annotations

import subprocess

import psycopg
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


def test_migrate_against_a_dead_server_fails_in_one_line() -> None:
    from throwaway_pg import free_port

    environment = subprocess_env(
        PLINTH_DATABASE_URL=f"postgresql+psycopg://u:hunter2@127.0.0.1:{free_port()}/x"
    )
    result = subprocess.run(
        ["plinth", "migrate"], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.startswith("plinth: migration failed: OperationalError")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr
