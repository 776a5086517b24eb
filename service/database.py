"""The SQLAlchemy engine (bounded pool, statement timeout) and the queries the API needs."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from service.config import Settings
from service.tables import Prediction, RegisteredModel


def _connect_args(settings: Settings, url_options: str | None = None) -> dict[str, Any]:
    """What every connection of the service sets, pooled or the prediction writer's. The URL's
    own `options` (e.g. a search_path) are kept: libpq takes one options string, so ours go
    after them rather than in their place."""
    ours = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    return {
        "options": f"{url_options} {ours}" if url_options else ours,
        # Without it an unreachable host blocks a request for the kernel's TCP timeout;
        # reuse the pool wait: both bound "how long may getting a connection take".
        "connect_timeout": max(1, math.ceil(settings.db_pool_timeout_seconds)),
        "application_name": "plinth",
    }


def answer_deadline(settings: Settings) -> float:
    """Seconds after which the database is taken for stalled: a connection attempt's limit plus
    a statement's. A stalled server (storage hung, VM paused) still accepts TCP and never
    enforces its statement timeout, so whoever waits for it needs a deadline of its own."""
    return settings.db_statement_timeout_ms / 1000 + settings.db_pool_timeout_seconds


def build_engine(
    settings: Settings, *, on_pool_change: Callable[[int], None] | None = None
) -> Engine:
    """A pooled engine whose size, wait and per-statement limits come from settings."""
    url = settings.sqlalchemy_url()
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # A restarted/failed-over server leaves dead connections in the pool: test each one
        # on checkout so the service recovers without a restart.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=_connect_args(settings, url.query.get("options")),
    )
    if on_pool_change is not None:
        # Counted back in only what was counted out: SQLAlchemy also checks in a connection
        # whose checkout failed (a pre-ping that could not reconnect during an outage), and
        # the gauge would drift below zero for good.
        def checked_out(_dbapi, record, _proxy):
            record.info["plinth_counted"] = True
            on_pool_change(+1)

        def checked_in(_dbapi, record):
            if record is not None and record.info.pop("plinth_counted", False):
                on_pool_change(-1)

        event.listen(engine, "checkout", checked_out)
        event.listen(engine, "checkin", checked_in)
    return engine


@dataclass(frozen=True)
class DatabaseState:
    revision: str | None  # Alembic's, None for an empty database
    read_only: bool  # a standby (after a fail-over) or default_transaction_read_only = on
    # The grants the API needs on the predictions table (stores, reads back) that this role
    # lacks, e.g. ("INSERT",); empty when the table is not there yet (migrations say so).
    missing_grants: tuple[str, ...] = ()


_NEEDED_GRANTS = ("INSERT", "SELECT")


def database_state(engine: Engine) -> DatabaseState:
    """Alembic's revision and whether the database takes writes (it answers reads on a standby,
    or to a role that lost its grants, while every prediction would fail); a real round trip,
    so it doubles as a ping."""
    grants = ", ".join(
        f"has_table_privilege(to_regclass('{Prediction.__tablename__}'), '{grant}')"
        for grant in _NEEDED_GRANTS
    )
    with engine.connect() as connection:
        exists, read_only, *granted = connection.execute(
            text(
                "SELECT to_regclass('alembic_version') IS NOT NULL,"
                f" current_setting('transaction_read_only') = 'on', {grants}"
            )
        ).one()
        revision = None
        if exists:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    pairs = zip(_NEEDED_GRANTS, granted, strict=True)
    missing = tuple(grant for grant, has in pairs if has is False)  # None: no table yet
    return DatabaseState(revision=revision, read_only=read_only, missing_grants=missing)


def async_connector(
    engine: Engine, settings: Settings
) -> Callable[[], Awaitable[psycopg.AsyncConnection]]:
    """Opens an autocommit asyncio connection to the engine's database with the same
    parameters as the pool's (the URL parsed by SQLAlchemy's own dialect, so a socket
    directory or sslmode in the URL means the same to both)."""
    args, params = engine.dialect.create_connect_args(engine.url)
    params.pop("context", None)  # the sync engine's adapters, not meant for this connection
    params.update(_connect_args(settings, params.get("options")), autocommit=True)
    return lambda: psycopg.AsyncConnection.connect(*args, **params)


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
