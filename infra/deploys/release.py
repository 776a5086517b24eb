"""`make release-rehearsal` / `make release-production`: an app-only release, as `kamal deploy`
or `cap deploy` are to their setup: the app deploy alone (build, preflight, upload, install,
migrate, cutover with its health check, pruning) on a host the whole deploy (site.py) has
provisioned. Nothing else on the host is looked at, so a release is the app's work only; a
changed setting of nginx, TLS, PostgreSQL or the OS takes the whole deploy."""

from pyinfra import host

from infra.deploys.app import app, require_provisioned
from infra.deploys.connection import no_nagle
from infra.deploys.cutover import deploy_lock
from infra.deploys.hostops import host_roles
from infra.deploys.validate import validate

no_nagle()
validate()  # the same inventory checks as the whole deploy, before any host changes
if "app" in host_roles():
    deploy_lock()
    require_provisioned()  # a host the whole deploy has not set up is refused, with what to run
    app()
else:  # the database's own host, in a split topology: nothing of a release lives there
    host.noop("release: not an app host (the database's host); nothing to release here")
