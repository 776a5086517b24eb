"""Schema migrations during a deploy: `plinth migrate` with the new release's code, before it
serves, skipped when the database already has the release's migrations (the same schema
released again, as in most app-only releases: the check costs 0.2 s, `plinth migrate` ~1 s
of imports under the service's load)."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.operations import server

from infra.deploys import layout
from infra.deploys.accounts import account
from infra.deploys.cutover import WORK_LOCK
from infra.deploys.hostops import host_roles, secret_file
from service.migrations import VERSION_TABLE

# Run by the dependency layer's interpreter (psycopg is there). Reads the password from its
# file itself, so it is never on a command line; prints the revisions, or nothing.
_REVISIONS_SCRIPT = """
import sys
import psycopg
host, port, dbname, user, password_file, table = sys.argv[1:]
with open(password_file) as f:
    password = f.read().strip()
with psycopg.connect(host=host, port=port, dbname=dbname, user=user, password=password,
                     connect_timeout=5) as conn:
    for (revision,) in conn.execute(f"SELECT version_num FROM {table}"):
        print(revision)
"""


class SchemaRevisions(FactBase):
    """The database's Alembic revisions, read as the service role (which may read the version
    table: readiness does). None when they cannot be read (no layer yet, no database, no
    table): the migration then runs and says what is wrong."""

    def command(self, python, host, port, dbname, user, password_file):
        args = [python, "-c", _REVISIONS_SCRIPT, host, port, dbname, user, password_file]
        command = shlex.join(str(arg) for arg in [*args, VERSION_TABLE])
        return f"{command} 2>/dev/null && echo ok || true"

    @staticmethod
    def default():
        return None

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        if not lines or lines[-1] != "ok":
            return None
        return sorted(lines[:-1])


def at_release_head(data, layer_dir: str, head: str | None) -> bool:
    """The database already has every migration of the release whose head is `head`."""
    if head is None:
        return False
    revisions = host.get_fact(
        SchemaRevisions,
        python=f"{layer_dir}/venv/bin/python",
        host=data.db_host,
        port=data.db_port,
        dbname=data.db_name,
        user=data.db_user,
        password_file=layout.DB_PASSWORD_FILE,
    )
    return revisions == [head]


def migration_account() -> None:
    """The system user migrations run as, and (on an app-only host) the owner's password."""
    server.group(name=f"Group {layout.MIGRATION_USER}", group=layout.MIGRATION_USER, system=True)
    account(  # noqa: S604 (a login shell, not subprocess shell=True)
        name=f"User {layout.MIGRATION_USER}: runs migrations, no login, no home",
        user=layout.MIGRATION_USER,
        group=layout.MIGRATION_USER,
        home="/nonexistent",
        shell="/usr/sbin/nologin",
        system=True,
        create_home=False,
        ensure_home=False,
    )
    if "db" not in host_roles():  # on a db host the postgres deploy made it already
        secret_file(
            name="Database owner password (generated here unless copied from the db host)",
            path=layout.DB_OWNER_PASSWORD_FILE,
        )


def migrate(data, release_dir: str, owner_url: str, **condition) -> None:
    """`plinth migrate` logged in as the owner role, run by its own system user: root reads
    the owner's password into that process's environment (never onto a command line), so
    neither the service user nor its env file ever holds it. `owner_url` has the password as
    `${owner_password}`."""
    server.shell(
        name=f"Migrations: plinth migrate as {layout.MIGRATION_USER}, role {data.db_owner}",
        commands=[
            f"owner_password=$(cat {layout.DB_OWNER_PASSWORD_FILE}) && "
            f"PLINTH_ENVIRONMENT={shlex.quote(str(data.app_environment))} "
            # DATABASE_URL is the one URL settings require: here it is the owner's.
            f'PLINTH_DATABASE_URL="{owner_url}" '
            # Under the work lock: a deploy killed mid-migration keeps the deploy lock until
            # the migration has ended (cutover.WORK_LOCK).
            f"flock -s {WORK_LOCK} "
            f"runuser -u {layout.MIGRATION_USER} -- {release_dir}/venv/bin/plinth migrate"
        ],
        **condition,
    )
