"""The database's two roles and what each may do (issue 6, least privilege).

- The owner role (`db_owner`) owns the database and every object in it; only `plinth migrate`
  logs in as it, so only migrations run DDL.
- The service role (`db_user`) may connect, use schema public and read and write rows of
  the tables (SELECT/INSERT/UPDATE/DELETE, sequences USAGE/SELECT): no CREATE, ALTER, DROP,
  TRUNCATE. Default privileges of the owner give it the same on every table a later
  migration creates. Alembic's version table is the exception: the service reads it
  (readiness) but only migrations write it (`plinth migrate` revokes the rest after each run,
  and so does the SQL here after its table-wide grants).

A fact lists what differs from that (empty when converged), so the deploy runs the grants
only then and a second deploy changes nothing. The restore runs the same SQL after
pg_restore, so a dump from any version comes back with these owners and grants."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase, operation

from service.migrations import VERSION_TABLE

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")
# Table privileges beyond rows that the service role must not hold (MAINTAIN, PostgreSQL 17
# only, is covered by the REVOKE ALL before the grants).
FORBIDDEN_TABLE_PRIVILEGES = ("TRUNCATE", "REFERENCES", "TRIGGER")
# What the service role may not do to the version table, on top of the above.
VERSION_TABLE_WRITES = ("INSERT", "UPDATE", "DELETE")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def converge_sql(db_name: str, owner: str, service: str) -> str:
    """Owners and grants, run as postgres in `db_name` in one transaction (idempotent)."""
    db, o, s = _ident(db_name), _ident(owner), _ident(service)
    tables, sequences = ", ".join(TABLE_PRIVILEGES), ", ".join(SEQUENCE_PRIVILEGES)
    return f"""
-- Whatever the service role owns (all of it, on a host a version before issue 6 deployed).
REASSIGN OWNED BY {s} TO {o};
ALTER DATABASE {db} OWNER TO {o};
REVOKE ALL ON DATABASE {db} FROM PUBLIC;
GRANT CONNECT ON DATABASE {db} TO {s};
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO {o};
GRANT USAGE ON SCHEMA public TO {s};
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {s};
GRANT {tables} ON ALL TABLES IN SCHEMA public TO {s};
DO $$ BEGIN
  IF to_regclass('public.{VERSION_TABLE}') IS NOT NULL THEN
    REVOKE {", ".join(VERSION_TABLE_WRITES)} ON public.{VERSION_TABLE} FROM {s};
  END IF;
END $$;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {s};
GRANT {sequences} ON ALL SEQUENCES IN SCHEMA public TO {s};
ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT {tables} ON TABLES TO {s};
ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT {sequences} ON SEQUENCES TO {s};
"""


def drift_sql(owner: str, service: str) -> str:
    """One row per way the current database differs from `converge_sql`; none when converged."""
    o, s, version_table = _literal(owner), _literal(service), _literal(VERSION_TABLE)
    want_tables = "{" + ",".join(sorted(TABLE_PRIVILEGES)) + "}"
    want_sequences = "{" + ",".join(sorted(SEQUENCE_PRIVILEGES)) + "}"

    def relations(kinds: str, privileges: tuple[str, ...]) -> str:
        """FROM clause: each relation of `kinds` in schema public with each of `privileges`."""
        array = "ARRAY[" + ", ".join(_literal(p) for p in privileges) + "]"
        return (
            f"FROM r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, unnest({array}) p "
            f"WHERE n.nspname = 'public' AND c.relkind IN ({kinds})"
        )

    tables = "'r', 'p', 'v', 'm', 'f'"
    return f"""
WITH r AS (SELECT to_regrole({o})::oid AS owner, to_regrole({s})::oid AS service)
SELECT 'role missing' FROM r WHERE owner IS NULL OR service IS NULL
UNION ALL
SELECT 'database owned by ' || pg_get_userbyid(d.datdba) FROM pg_database d, r
 WHERE d.datname = current_database() AND d.datdba <> r.owner
UNION ALL
SELECT 'service role owns ' || count(*) || ' objects' FROM pg_shdepend sd, r
 WHERE sd.refclassid = 'pg_authid'::regclass AND sd.refobjid = r.service AND sd.deptype = 'o'
   AND sd.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
 HAVING count(*) > 0
UNION ALL
SELECT 'PUBLIC may ' || a.privilege_type || ' on the database' FROM pg_database d,
 aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
 WHERE d.datname = current_database() AND a.grantee = 0
UNION ALL
SELECT 'PUBLIC may CREATE in schema public' FROM pg_namespace n,
 aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
 WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE'
UNION ALL
SELECT 'service role cannot connect' FROM r
 WHERE NOT has_database_privilege(r.service, current_database(), 'CONNECT')
UNION ALL
SELECT 'owner role cannot create in schema public' FROM r
 WHERE NOT has_schema_privilege(r.owner, 'public', 'CREATE')
UNION ALL
SELECT 'service role: schema public ' || v.p || ' is ' || NOT v.want FROM r,
 (VALUES ('USAGE', true), ('CREATE', false)) v(p, want)
 WHERE has_schema_privilege(r.service, 'public', v.p) <> v.want
UNION ALL
SELECT format('service role lacks %s on %s', p, c.oid::regclass)
 {relations(tables, TABLE_PRIVILEGES)} AND NOT has_table_privilege(r.service, c.oid, p)
   AND (c.relname <> {version_table} OR p = 'SELECT')
UNION ALL
SELECT format('service role may %s on %s', p, c.oid::regclass)
 {relations(tables, VERSION_TABLE_WRITES)}
   AND c.relname = {version_table} AND has_table_privilege(r.service, c.oid, p)
UNION ALL
SELECT format('service role may %s on %s', p, c.oid::regclass)
 {relations(tables, FORBIDDEN_TABLE_PRIVILEGES)} AND has_table_privilege(r.service, c.oid, p)
UNION ALL
SELECT format('service role lacks %s on sequence %s', p, c.oid::regclass)
 {relations("'S'", SEQUENCE_PRIVILEGES)} AND NOT has_sequence_privilege(r.service, c.oid, p)
UNION ALL
SELECT format('service role may %s on sequence %s', p, c.oid::regclass)
 {relations("'S'", ("UPDATE",))} AND has_sequence_privilege(r.service, c.oid, p)
UNION ALL
SELECT 'no default privileges on new ' || k.label FROM r,
 (VALUES ('r', 'tables', '{want_tables}'), ('S', 'sequences', '{want_sequences}'))
   AS k(t, label, want)
 WHERE coalesce((SELECT array_agg(a.privilege_type ORDER BY a.privilege_type)::text
   FROM pg_default_acl d, aclexplode(d.defaclacl) a
   WHERE d.defaclrole = r.owner AND d.defaclnamespace = 'public'::regnamespace
     AND d.defaclobjtype = k.t::"char" AND a.grantee = r.service), '') <> k.want
"""  # noqa: S608 (the role names are quoted by _literal)


def _psql(db_name: str, options: str = "") -> str:
    """psql as postgres (peer) in `db_name`; the SQL comes on stdin or in `options`."""
    return (
        f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 {options}-d {shlex.quote(db_name)}"
    )


def converge_command(db_name: str, owner: str, service: str) -> str:
    """The shell command that applies `converge_sql` (also used by the restore)."""
    sql = converge_sql(db_name, owner, service)
    return f"cd / && printf '%s' {shlex.quote(sql)} | {_psql(db_name, '--single-transaction ')}"


class PrivilegeDrift(FactBase):
    """What differs from the owners and grants above (list of lines; empty: converged)."""

    @staticmethod
    def default():
        return []

    def command(self, db_name, owner, service):
        check = f"{_psql(db_name, '-tA ')} -c {shlex.quote(drift_sql(owner, service))}"
        reachable = f"{_psql(db_name, '-tA ')} -c 'select 1' >/dev/null 2>&1"
        return (
            # From / : psql as postgres would warn that it cannot enter root's directory.
            f"cd / && if command -v psql >/dev/null && {reachable}; then {check} 2>&1 || true; "
            f"else echo 'database {shlex.quote(db_name)} not there yet'; fi"
        )

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


@operation(is_idempotent=False)
def privileges_converged(db_name: str, owner: str, service: str):
    """Apply `converge_sql` (call it only when `PrivilegeDrift` lists something)."""
    yield converge_command(db_name, owner, service)
