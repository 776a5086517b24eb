"""`make restore` (`pyinfra INVENTORY infra/deploys/restore.py`): restore a dump the backups
deploy made. PLINTH_RESTORE_DUMP names it (a file name in backup_dir, or an absolute path on
the host); unset, the newest dump is restored. See docs/operations.md."""

import os

from infra.deploys.backups import restore_database
from infra.deploys.connection import no_nagle
from infra.deploys.cutover import deploy_lock
from infra.deploys.validate import validate

no_nagle()
validate()  # bad inventory data stops the run here, as for every entry deploy
deploy_lock()  # not while a deploy migrates or restarts the service, nor two restores at once

restore_database(os.environ.get("PLINTH_RESTORE_DUMP") or None)
