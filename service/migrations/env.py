"""Alembic environment: online migrations only, with the URL handed over by the CLI/tests."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from service.tables import Base

config = context.config
url = config.attributes.get("url")
if url is None:
    raise RuntimeError("run migrations through `plinth migrate` (it supplies the database URL)")

# NullPool: a one-shot command must not leave pooled connections behind.
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # Concurrent `plinth migrate` runs (two hosts, a retried deploy) must not interleave.
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7243001)")
        context.run_migrations()
engine.dispose()
