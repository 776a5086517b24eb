"""Alembic environment: online migrations only, with the URL handed over by the CLI/tests."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from service.migrations import VERSION_TABLE, NewerRevisionError, known_revisions
from service.tables import Base

# The owner's default privileges give the service role row rights on every table a migration
# creates, the version table too; only migrations may move the schema's recorded revision, so
# every role but the table's owner keeps SELECT alone (readiness reads it). No `%` in the SQL:
# the driver would read it as a placeholder.
_VERSION_TABLE_READ_ONLY = f"""
DO $$
DECLARE writer text;
BEGIN
  FOR writer IN
    SELECT DISTINCT quote_ident(r.rolname) FROM pg_class c
      CROSS JOIN LATERAL aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
     WHERE c.oid = to_regclass('{VERSION_TABLE}') AND a.grantee <> c.relowner
       AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
  LOOP
    EXECUTE 'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {VERSION_TABLE} FROM ' || writer;
  END LOOP;
END $$
"""  # noqa: S608 (a constant table name, no input)

config = context.config
url = config.attributes.get("url")
if url is None:
    raise RuntimeError("run migrations through `plinth migrate` (it supplies the database URL)")

# NullPool: a one-shot command must not leave pooled connections behind. A connect timeout:
# without one, a host that accepts and never answers holds the deploy for the kernel's TCP
# timeout (the service bounds its own connects the same way).
CONNECT_TIMEOUT_SECONDS = 10
engine = create_engine(
    url, poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}
)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # Concurrent `plinth migrate` runs (two hosts, a retried deploy) must not interleave.
        transaction_per_migration=False,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7243001)")
        # Checked under the lock, before Alembic looks for a path (and fails with a traceback
        # naming a revision it "can't locate"): refuse a database a newer release migrated.
        known = known_revisions()
        for current in context.get_context().get_current_heads():
            if current not in known:
                raise NewerRevisionError(current, context.script.get_current_head())
        context.run_migrations()
        connection.exec_driver_sql(_VERSION_TABLE_READ_ONLY)
engine.dispose()
