"""PostgreSQL: Debian's package, the service's database and its two roles (an owner that
migrations log in as, a service role with row access only: see database_roles). Each role's
password is generated on the host at first deploy and only ever read from there (hostops)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, postgres, systemd

from infra.deploys import layout
from infra.deploys.database_roles import PrivilegeDrift, privileges_converged
from infra.deploys.hostops import (
    PasswordAccepted,
    applied_file,
    apply_conditions,
    config_directory,
    role_password,
    secret_file,
)
from infra.deploys.templating import template

DB_CONNECTION_DEFAULTS = {
    # The service's database.
    "db_name": "plinth",
    # The role the service logs in as: reads and writes rows of its tables, no DDL.
    "db_user": "plinth",
    # The role that owns the database and every object in it; only migrations log in as it.
    # A login role with its own host-generated password rather than peer authentication:
    # migrations run on the app host, which need not be the database host.
    "db_owner": "plinth_owner",
    # Where the service reaches PostgreSQL: the db host's address as seen from the app host,
    # and its port.
    "db_host": "127.0.0.1",
    "db_port": 5432,
}

POSTGRES_DEFAULTS = {
    **DB_CONNECTION_DEFAULTS,
    # What PostgreSQL listens on: loopback only (its unix socket is always there). Addresses
    # or host names, as a list or one comma-separated string; "*" is every address.
    "db_listen_addresses": "localhost",
    # Networks allowed to log in as db_user or db_owner over TCP (scram-sha-256); add the app
    # host's address when the database lives on another host.
    "db_client_networks": ["127.0.0.1/32", "::1/128"],
    # Connection cap of the whole cluster.
    "db_max_connections": 100,
}


# The cluster's own configuration files, as pg_createcluster writes them: world-readable (0644)
# but for pg_hba.conf (templated below) and pg_ident.conf (listed so its mode is ours too).
# They name paths, ports and settings an attacker on the host should not learn (Lynis
# DBS-1828, CIS PostgreSQL); PostgreSQL and postgresql-common read them as postgres or root,
# and a client names host and port itself (the service does). Only `pg_lsclusters` run by
# another user shows the cluster as unknown.
CLUSTER_CONFIG_FILES = ("postgresql.conf", "pg_ctl.conf", "start.conf", "pg_ident.conf")
CONFIG_FILE_MODE = "640"
# Debian's unix socket directory. The db host checks a role's password through it (pg_hba.conf
# admits the roles there with scram-sha-256): it exists whatever db_listen_addresses and
# db_client_networks say, where 127.0.0.1 may not listen or be admitted.
SOCKET_DIR = "/run/postgresql"


def listen_addresses(value) -> list[str] | None:
    """db_listen_addresses as a list of entries (None when it is neither a list nor a string)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return None
    return [str(entry).strip() for entry in value]


def postgres_version() -> str:
    """Debian's PostgreSQL major version for the host's release (15 on 12, 17 on 13)."""
    release = str((host.get_fact(LinuxDistribution) or {}).get("major"))
    return {"12": "15", "13": "17"}.get(release, "15")


@deploy("PostgreSQL", data_defaults=POSTGRES_DEFAULTS)
def postgresql() -> None:
    data = host.data
    version = postgres_version()
    conf_dir = f"/etc/postgresql/{version}/main"
    apt.packages(name="PostgreSQL", packages=["postgresql"], no_recommends=True)

    settings = template(
        "postgres/plinth.conf.j2",
        f"{conf_dir}/conf.d/plinth.conf",
        name="PostgreSQL: listen on loopback, scram-sha-256",
        mode=CONFIG_FILE_MODE,
        user="postgres",
        group="postgres",
        listen_addresses=",".join(listen_addresses(data.db_listen_addresses)),
        port=data.db_port,
        max_connections=data.db_max_connections,
    )
    hba = template(
        "postgres/pg_hba.conf.j2",
        f"{conf_dir}/pg_hba.conf",
        name="PostgreSQL: who may log in",
        mode=CONFIG_FILE_MODE,
        user="postgres",
        group="postgres",
        db_name=data.db_name,
        db_user=data.db_user,
        db_owner=data.db_owner,
        client_networks=data.db_client_networks,
    )
    for config_file in CLUSTER_CONFIG_FILES:
        files.file(
            name=f"PostgreSQL: {config_file} readable by postgres only",
            path=f"{conf_dir}/{config_file}",
            mode=CONFIG_FILE_MODE,
            user="postgres",
            group="postgres",
        )
    systemd.service(
        name="PostgreSQL running and enabled",
        service="postgresql",
        running=True,
        enabled=True,
    )
    settings_path, hba_path = f"{conf_dir}/conf.d/plinth.conf", f"{conf_dir}/pg_hba.conf"
    restart, record_settings = apply_conditions("postgresql-settings", settings_path, settings)
    reload, record_hba = apply_conditions("postgresql-hba", hba_path, hba)
    systemd.service(
        name="Restart PostgreSQL (listen settings changed)",
        service="postgresql",
        restarted=True,
        _if=restart,
    )
    applied_file(
        name="PostgreSQL settings in effect (recorded)",
        key="postgresql-settings",
        path=settings_path,
        _if=record_settings,
    )
    systemd.service(
        name="Reload PostgreSQL (pg_hba changed)",
        service="postgresql",
        reloaded=True,
        _if=reload,
    )
    applied_file(
        name="pg_hba.conf in effect (recorded)",
        key="postgresql-hba",
        path=hba_path,
        _if=record_hba,
    )

    as_postgres = {"_sudo": True, "_sudo_user": "postgres", "_use_sudo_login": True}
    for role in (data.db_owner, data.db_user):
        postgres.role(
            name=f"Role {role}: login, no superuser/createdb/createrole",
            role=role,
            login=True,
            superuser=False,
            createdb=False,
            createrole=False,
            **as_postgres,
        )
    postgres.database(
        name=f"Database {data.db_name}, owned by {data.db_owner}",
        database=data.db_name,
        owner=data.db_owner,
        encoding="UTF8",
        **as_postgres,
    )
    drift = host.get_fact(
        PrivilegeDrift, db_name=data.db_name, owner=data.db_owner, service=data.db_user
    )
    if drift:
        privileges_converged(
            name=f"{data.db_owner} owns everything, {data.db_user} reads and writes rows "
            f"({'; '.join(drift[:3])}{'; ...' if len(drift) > 3 else ''})",
            db_name=data.db_name,
            owner=data.db_owner,
            service=data.db_user,
        )
    config_directory()
    _password_generated_on_the_host(data, data.db_user, layout.DB_PASSWORD_FILE)
    _password_generated_on_the_host(data, data.db_owner, layout.DB_OWNER_PASSWORD_FILE)


def _password_generated_on_the_host(data, role: str, password_file: str) -> None:
    password = secret_file(name=f"Role {role}: password generated on the host", path=password_file)
    accepted = host.get_fact(
        PasswordAccepted,
        password_file=password_file,
        role=role,
        database=data.db_name,
        db_host=SOCKET_DIR,
        db_port=data.db_port,
    )
    # A role that does not log in with its file yet (new, or a changed file) gets it now.
    role_password(
        name=f"Role {role} gets the generated password",
        role=role,
        password_file=password_file,
        **({"_if": password.did_change} if accepted else {}),
    )
