"""`make restore` (`pyinfra INVENTORY infra/deploys/restore.py`): restore a dump the backups
deploy made. PLINTH_RESTORE_DUMP names it (a file name in backup_dir, or an absolute path on
the host); unset, the newest dump is restored. See docs/operations.md."""

import os

from infra.deploys.backups import restore_database
from infra.deploys.connection import no_nagle

no_nagle()

restore_database(os.environ.get("PLINTH_RESTORE_DUMP") or None)
