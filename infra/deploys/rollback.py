"""`make rollback`: back to the release that was live before the running one, or to the one named
in PLINTH_ROLLBACK_TO (a release id, as in /srv/plinth/releases/). The same cutover as a
deploy: switch `current`, re-exec Gunicorn, health check through nginx, switch back on failure.
No migrations run: the schema stays expanded, which the older release tolerates
(docs/releases.md)."""

import os

from pyinfra import host

from infra.deploys import layout
from infra.deploys.connection import no_nagle
from infra.deploys.cutover import deploy_lock, release_cutover, release_tool, rollback_target
from infra.deploys.hostops import host_roles

no_nagle()
if "app" in host_roles():
    deploy_lock()
    target = rollback_target(os.environ.get("PLINTH_ROLLBACK_TO"))
    release_tool()
    release_cutover(
        name=f"Rollback: current -> {target.removeprefix(layout.RELEASES_DIR + '/')}",
        release_dir=target,
    )
else:  # the database's own host, in a split topology: no release lives there
    host.noop("rollback: not an app host (the database's host); nothing to roll back here")
