"""PostgreSQL: Debian's package, the service's database and role. The role's password is
generated on the host at first deploy and only ever read from there (see hostops)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, postgres, systemd

from infra.deploys import layout
from infra.deploys.hostops import (
    PasswordAccepted,
    config_directory,
    role_password,
    secret_file,
)
from infra.deploys.templating import template

DB_CONNECTION_DEFAULTS = {
    # Database and role the service uses (the role owns the database and runs migrations).
    "db_name": "plinth",
    "db_user": "plinth",
    # Where the service reaches PostgreSQL: the db host's address as seen from the app host.
    "db_host": "127.0.0.1",
    "db_port": 5432,
}

POSTGRES_DEFAULTS = {
    **DB_CONNECTION_DEFAULTS,
    # What PostgreSQL listens on: loopback only (its unix socket is always there).
    "db_listen_addresses": "localhost",
    # Networks allowed to log in as db_user over TCP (scram-sha-256); add the app host's
    # address when the database lives on another host.
    "db_client_networks": ["127.0.0.1/32", "::1/128"],
    # Connection cap of the whole cluster.
    "db_max_connections": 100,
}


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
        user="postgres",
        group="postgres",
        listen_addresses=data.db_listen_addresses,
        port=data.db_port,
        max_connections=data.db_max_connections,
    )
    hba = template(
        "postgres/pg_hba.conf.j2",
        f"{conf_dir}/pg_hba.conf",
        name="PostgreSQL: who may log in",
        mode="640",
        user="postgres",
        group="postgres",
        db_name=data.db_name,
        db_user=data.db_user,
        client_networks=data.db_client_networks,
    )
    systemd.service(
        name="PostgreSQL running and enabled",
        service="postgresql",
        running=True,
        enabled=True,
    )
    systemd.service(
        name="Restart PostgreSQL (listen settings changed)",
        service="postgresql",
        restarted=True,
        _if=settings.did_change,
    )
    systemd.service(
        name="Reload PostgreSQL (pg_hba changed)",
        service="postgresql",
        reloaded=True,
        _if=hba.did_change,
    )

    as_postgres = {"_sudo": True, "_sudo_user": "postgres", "_use_sudo_login": True}
    postgres.role(
        name=f"Role {data.db_user}: login, no superuser/createdb/createrole",
        role=data.db_user,
        login=True,
        superuser=False,
        createdb=False,
        createrole=False,
        **as_postgres,
    )
    postgres.database(
        name=f"Database {data.db_name}",
        database=data.db_name,
        owner=data.db_user,
        encoding="UTF8",
        **as_postgres,
    )
    config_directory()
    password = secret_file(
        name="Database password generated on the host", path=layout.DB_PASSWORD_FILE
    )
    accepted = host.get_fact(
        PasswordAccepted,
        password_file=layout.DB_PASSWORD_FILE,
        role=data.db_user,
        database=data.db_name,
        db_host="127.0.0.1",
        db_port=data.db_port,
    )
    if not accepted:
        role_password(
            name=f"Role {data.db_user} gets the generated password",
            role=data.db_user,
            password_file=layout.DB_PASSWORD_FILE,
        )
    else:
        role_password(
            name=f"Role {data.db_user} gets the regenerated password",
            role=data.db_user,
            password_file=layout.DB_PASSWORD_FILE,
            _if=password.did_change,
        )
