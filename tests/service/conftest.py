"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL or a throwaway server), migrated once per
session; each test starts from empty tables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from service_support import artifacts_with_test_models
from sqlalchemy import make_url
from throwaway_pg import ThrowawayPostgres

from service.app import create_app
from service.config import Settings
from service.migrations import upgrade


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    supplied = os.environ.get("TEST_DATABASE_URL")
    if supplied:
        yield supplied
        return
    with ThrowawayPostgres() as server:
        yield server.url()


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a psycopg connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def migrated_database(database_url: str) -> str:
    upgrade(make_url(database_url).set(drivername="postgresql+psycopg"))
    return database_url


@pytest.fixture
def db(migrated_database: str) -> Iterator[psycopg.Connection]:
    """A direct connection to the test database, with the service's tables emptied."""
    with psycopg.connect(libpq(migrated_database), autocommit=True) as connection:
        connection.execute("TRUNCATE predictions, model_registry RESTART IDENTITY")
        yield connection


@pytest.fixture(scope="session")
def test_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_with_test_models(tmp_path_factory.mktemp("models"), sleepy_delay=1.0)


@pytest.fixture
def settings(db: psycopg.Connection, migrated_database: str, test_artifacts: Path) -> Settings:
    return Settings(
        environment="testing",
        database_url=migrated_database,
        artifacts_dir=test_artifacts,
        models=["iris", "sleepy", "broken"],
        max_batch_size=8,
        predict_timeout_seconds=0.5,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # raise_server_exceptions=False: assert on the 500 the client would really see.
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client
