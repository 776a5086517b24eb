"""plinth's one entry point: `pyinfra INVENTORY infra/deploys/site.py` (see README)."""

from infra.deploys.app import app
from infra.deploys.base import base
from infra.deploys.hostops import host_roles
from infra.deploys.nginx import nginx
from infra.deploys.postgres import postgresql
from infra.deploys.tls import tls
from infra.deploys.validate import validate

validate()  # bad inventory data stops the run here, before any host changes
roles = host_roles()

base()
if "db" in roles:
    postgresql()
if "app" in roles:
    app()
    nginx()
    tls()  # the HTTPS server on top of nginx's port 80 (tls_mode "off" leaves HTTP only)
