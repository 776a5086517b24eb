"""plinth's one entry point: `pyinfra INVENTORY infra/deploys/site.py` (see README)."""

from infra.deploys.access import access
from infra.deploys.app import app
from infra.deploys.backups import backups
from infra.deploys.base import base
from infra.deploys.connection import no_nagle
from infra.deploys.cutover import deploy_lock
from infra.deploys.firewall import firewall
from infra.deploys.hostops import host_roles
from infra.deploys.logcaps import logcaps
from infra.deploys.nginx import nginx
from infra.deploys.os_hardening import os_hardening
from infra.deploys.postgres import postgresql
from infra.deploys.sandbox import sandbox
from infra.deploys.tls import tls
from infra.deploys.updates import updates
from infra.deploys.validate import validate

no_nagle()  # ~4x faster facts and commands over SSH (see connection.py)
validate()  # bad inventory data stops the run here, before any host changes
roles = host_roles()
deploy_lock()  # one deploy per host at a time; held until this run's SSH connection closes

base()
os_hardening()  # login policy (before access() adds a login), sysctls, Lynis and its profile
access()  # the deploy user (made and proven on a fresh host's root login), then root login off
updates()  # unattended security upgrades
firewall()  # inbound default-deny; the SSH port always stays open
if "db" in roles:
    postgresql()
    backups()  # nightly pg_dump; restore with infra/deploys/restore.py
if "app" in roles:
    # nginx and TLS before the app: a release's health check goes through them with the
    # inventory's domain, mode and certificate, so they must already serve those (nginx
    # needs no socket to start or pass `nginx -t`).
    nginx()
    logcaps()  # nginx logs rotated by size too
    tls()  # the HTTPS server on top of nginx's port 80 (tls_mode "off" leaves HTTP only)
    app()
sandbox()  # systemd drop-ins over nginx and PostgreSQL, once both are installed
