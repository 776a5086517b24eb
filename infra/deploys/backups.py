"""Backups: a nightly `pg_dump -Fc` of the service's database by a systemd timer into a
directory only postgres can read (files 0600), dumps older than the retention removed. The
restore drill is `infra/deploys/restore.py` (`make restore`), using `restore_database` below."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime

from pyinfra import host
from pyinfra.api import DeployError, FactBase, deploy
from pyinfra.operations import files, server, systemd

from infra.deploys import layout
from infra.deploys.database_roles import converge_command
from infra.deploys.hostops import host_roles, units_to_reload
from infra.deploys.postgres import DB_CONNECTION_DEFAULTS
from infra.deploys.templating import template

BACKUP_SCRIPT = f"/usr/local/sbin/{layout.APP_NAME}-backup"
BACKUP_UNIT = f"{layout.APP_NAME}-backup.service"
BACKUP_TIMER = f"{layout.APP_NAME}-backup.timer"
# The dump a restore takes of the database it replaces: `pre-restore-<db>-<time>.dump` in
# backup_dir, removed by the same retention, never picked as "the newest dump" to restore.
PRE_RESTORE_PREFIX = "pre-restore-"

BACKUP_DEFAULTS = {
    **DB_CONNECTION_DEFAULTS,
    # Where the dumps live on the database host (0700 postgres; each dump 0600).
    "backup_dir": f"/var/backups/{layout.APP_NAME}",
    # Days a dump is kept; the newest is never older than a day while the timer runs.
    "backup_retention_days": 14,
    # When the dump runs (systemd OnCalendar, host time = UTC), plus a random delay.
    "backup_on_calendar": "*-*-* 02:30:00",
    "backup_randomized_delay": "15min",
}


@deploy("Backups", data_defaults=BACKUP_DEFAULTS)
def backups() -> None:
    data = host.data
    days = data.backup_retention_days  # checked by validate.py, as every key here
    files.directory(
        name=f"Backup directory {data.backup_dir}",
        path=data.backup_dir,
        mode="700",
        user="postgres",
        group="postgres",
    )
    names = {"unit": BACKUP_UNIT, "timer": BACKUP_TIMER, "script": BACKUP_SCRIPT}
    common = {**names, "db_name": data.db_name, "backup_dir": data.backup_dir}
    common["pre_restore_prefix"] = PRE_RESTORE_PREFIX
    changed = [
        template(
            "backups/plinth-backup.sh.j2",
            BACKUP_SCRIPT,
            name="Backup script",
            mode="755",
            retention_days=days,
            **common,
        ),
        template(
            "backups/plinth-backup.service.j2",
            f"{layout.SYSTEMD_UNIT_DIR}/{BACKUP_UNIT}",
            name=f"{BACKUP_UNIT}",
            **common,
        ),
        template(
            "backups/plinth-backup.timer.j2",
            f"{layout.SYSTEMD_UNIT_DIR}/{BACKUP_TIMER}",
            name=f"{BACKUP_TIMER}",
            on_calendar=data.backup_on_calendar,
            randomized_delay=data.backup_randomized_delay,
            **common,
        ),
    ]
    systemd.daemon_reload(
        name="systemd reads the backup units",
        _if=units_to_reload([BACKUP_UNIT, BACKUP_TIMER], *changed),
    )
    systemd.service(name=f"{BACKUP_TIMER} active", service=BACKUP_TIMER, running=True, enabled=True)


class LatestDump(FactBase):
    """The newest dump in `directory` (full path), or None."""

    def command(self, directory, db_name):
        d = shlex.quote(directory)
        return f"ls -1t {d}/{shlex.quote(db_name)}-*.dump 2>/dev/null | head -n 1 || true"

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None


def chosen_dump(data, requested: str | None) -> str:
    """A dump path on the host: `requested` (a file name in backup_dir, or an absolute path),
    else the newest dump."""
    if requested:
        return requested if requested.startswith("/") else f"{data.backup_dir}/{requested}"
    latest = host.get_fact(LatestDump, directory=data.backup_dir, db_name=data.db_name)
    if not latest:
        raise DeployError(f"no dump in {data.backup_dir} to restore")
    return latest


@deploy("Restore the database", data_defaults=BACKUP_DEFAULTS)
def restore_database(requested: str | None = None) -> None:
    """Replace the database's contents with a dump while the service is stopped (with its
    socket, which would start it again), then start it again whatever happened.

    On a host with both roles that is one shell. On a split topology the service's hosts and
    the database's are others: each app host stops its service, then the db host restores,
    then the app hosts start again. pyinfra runs each operation on every host before the next
    one, in the order of the lines here, and a host that fails (a failed restore) leaves the
    others going, so the app hosts start again after a failed restore too."""
    roles = host_roles()
    units = f"{layout.SOCKET_UNIT} {layout.SERVICE_UNIT}"
    if "db" not in roles:
        _on_app_host("stop", units, "Stop the service: the database host restores next")
    else:
        _restore(host.data, requested, units if "app" in roles else None)
    if "db" not in roles:
        _on_app_host("start", units, "Start the service again, whatever the restore did")


def _on_app_host(verb: str, units: str, name: str) -> None:
    # Not systemd.service(running=...): its fact is read before any operation runs, when the
    # service still runs, so "running" would be a no-op after the stop.
    server.shell(name=name, commands=[f"systemctl {verb} {units}"])


def _restore(data, requested: str | None, units: str | None) -> None:
    """The dump restored on the database host, with `units` stopped around it when it serves
    too: the database as it is is dumped first (PRE_RESTORE_PREFIX, in backup_dir: a restore
    of the wrong dump can be undone); pg_restore runs in one transaction; the owner role gets
    back every object and the service role its row grants (a dump from before the owner role
    existed has the service role as owner)."""
    dump = chosen_dump(data, requested)
    d, db = shlex.quote(dump), shlex.quote(data.db_name)
    # Named here, not on the host, so that pyinfra's output says where it is.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    before = f"{data.backup_dir}/{PRE_RESTORE_PREFIX}{data.db_name}-{stamp}.dump"
    server.shell(
        name=f"Restore {dump} (the database as it was first dumped to {before})",
        commands=[
            f"test -f {d} || {{ printf 'no such dump: %s\\n' {d} >&2; exit 1; }}",
            *([f"systemctl stop {units}"] if units else []),
            # One shell: the service starts again whatever fails in it.
            # Written beside its name and renamed once complete, as the nightly dumps: a
            # truncated one must never look like the way back.
            f"umask 077; before={shlex.quote(before)}; "
            "if ! runuser -u postgres -- pg_dump --format=custom "
            f'--dbname={db} --file="$before.partial" || ! mv "$before.partial" "$before"; '
            'then rc=1; rm -f "$before.partial"; '
            "echo 'restore not started: the database could not be dumped first' >&2; "
            # Root opens the dump (it may be anywhere root can read), pg_restore reads stdin.
            f"elif ! runuser -u postgres -- pg_restore --clean --if-exists --single-transaction "
            f"--exit-on-error --dbname={db} < {d}; "
            'then rc=1; echo "restore failed (above) and changed nothing (one transaction); '
            'the database as it was is also in $before" >&2; '
            f"elif ! {{ {converge_command(data.db_name, data.db_owner, data.db_user)}; }}; "
            'then rc=1; echo "data restored, but setting its owner and grants failed (above): '
            'run the whole deploy, which sets them again" >&2; '
            'else rc=0; echo "restored; the database as it was before: $before"; fi; '
            + (f"systemctl start {units}; " if units else "")
            + "exit $rc",
        ],
    )
