"""The SQLAlchemy engine (bounded pool, statement timeout) and the queries the API needs."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from service.config import Settings
from service.tables import Prediction, RegisteredModel

_INSERT_PREDICTION = insert(Prediction.__table__)


def build_engine(
    settings: Settings, *, on_pool_change: Callable[[int], None] | None = None
) -> Engine:
    """A pooled engine whose size, wait and per-statement limits come from settings."""
    engine = create_engine(
        settings.sqlalchemy_url(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # A restarted/failed-over server leaves dead connections in the pool: test each one
        # on checkout so the service recovers without a restart.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
            # Without it an unreachable host blocks a request for the kernel's TCP timeout;
            # reuse the pool wait: both bound "how long may getting a connection take".
            "connect_timeout": max(1, math.ceil(settings.db_pool_timeout_seconds)),
            "application_name": "plinth",
        },
    )
    if on_pool_change is not None:
        event.listen(engine, "checkout", lambda *_: on_pool_change(+1))
        event.listen(engine, "checkin", lambda *_: on_pool_change(-1))
    return engine


def current_revision(engine: Engine) -> str | None:
    """Alembic's revision in the database; a real round trip, so it doubles as a ping."""
    with engine.connect() as connection:
        exists = connection.execute(text("SELECT to_regclass('alembic_version')")).scalar()
        if exists is None:
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def insert_predictions(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Write a batch atomically; returns only after its COMMIT succeeded (durable on disk
    with PostgreSQL's default ``synchronous_commit=on``).

    The usual batch of one is a single INSERT in autocommit mode: PostgreSQL runs a lone
    statement as its own transaction, so this is BEGIN/INSERT/COMMIT in one round trip
    instead of three. A larger batch is an executemany (one statement per row) and so needs
    the explicit transaction. Both use the cached compiled statement (``.values(rows)``
    would be recompiled per request).
    """
    with engine.connect() as connection:
        if len(rows) == 1:
            connection.execution_options(isolation_level="AUTOCOMMIT")  # reset at check-in
            connection.execute(_INSERT_PREDICTION, rows[0])
        else:
            with connection.begin():
                connection.execute(_INSERT_PREDICTION, list(rows))


def get_prediction(engine: Engine, prediction_id: uuid.UUID) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(Prediction.__table__).where(Prediction.id == prediction_id)
        ).first()
    return None if row is None else dict(row._mapping)


def record_loaded_model(
    engine: Engine, *, name: str, version: str, artifact_sha256: str, framework: str
) -> None:
    """Upsert the registry row and bump ``loaded_at`` (one row per distinct artifact)."""
    statement = pg_insert(RegisteredModel.__table__).values(
        name=name, version=version, artifact_sha256=artifact_sha256, framework=framework
    )
    statement = statement.on_conflict_do_update(
        index_elements=["name", "version", "artifact_sha256"],
        set_={"loaded_at": text("now()"), "framework": statement.excluded.framework},
    )
    with engine.begin() as connection:
        connection.execute(statement)
