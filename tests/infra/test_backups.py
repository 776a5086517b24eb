"""Backups: the nightly timer, private dumps, and a restore drill through the restore deploy
(a prediction made, backed up, deleted, restored, found again)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from infra.deploys import layout
from infra.deploys.backups import PRE_RESTORE_PREFIX
from tests.infra.conftest import INVENTORY, REPO, host_json_path
from tests.infra.https_client import IRIS, PREDICT_PATH, request

pytestmark = pytest.mark.infra

BACKUP_DIR = "/var/backups/plinth"


def _run_backup(host) -> str:
    host.check_output("systemctl start plinth-backup.service")  # oneshot: returns when done
    return host.check_output(f"ls -1t {BACKUP_DIR}/plinth-*.dump | head -n 1")


def _restore(dump_name: str | None, roles: str = "app,db"):
    env = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path())}
    env["PLINTH_REHEARSAL_ROLES"] = roles
    env.pop("PLINTH_RESTORE_DUMP", None)
    if dump_name:
        env["PLINTH_RESTORE_DUMP"] = dump_name
    args = [sys.executable, "-m", "pyinfra", "-y", INVENTORY, "infra/deploys/restore.py"]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)


def test_backup_timer_is_scheduled_nightly(host):
    timer = host.service("plinth-backup.timer")
    assert timer.is_enabled and timer.is_running
    calendar = host.check_output("systemctl show -p TimersCalendar --value plinth-backup.timer")
    assert "02:30:00" in calendar, calendar


def test_backup_is_a_private_custom_format_dump(host):
    dump = _run_backup(host)
    assert host.file(BACKUP_DIR).mode == 0o700
    assert host.file(BACKUP_DIR).user == "postgres"
    assert host.file(dump).mode == 0o600
    assert host.file(dump).user == "postgres"
    listing = host.check_output(f"runuser -u postgres -- pg_restore --list {dump}")
    assert "TABLE DATA public predictions" in listing


def test_a_backup_while_postgresql_is_stopped_fails_and_leaves_it_stopped(host, rehearsal):
    """An operator stopped PostgreSQL for maintenance: the night's backup must not start it
    again behind their back (Requires= did); it fails, and leaves no half-written dump."""
    host.check_output("systemctl stop postgresql")
    try:
        assert host.run("systemctl start plinth-backup.service").rc != 0
        assert host.run("systemctl is-active postgresql").stdout.strip() != "active"
        assert host.check_output(f"ls -A {BACKUP_DIR} | grep -c partial || true") == "0"
    finally:
        host.check_output("systemctl start postgresql")
    deadline = time.monotonic() + 30
    while request(rehearsal, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready once PostgreSQL is back"
        time.sleep(0.5)


def test_retention_removes_dumps_older_than_the_limit_and_keeps_the_rest(host):
    """14 days (backup_retention_days): a 30-day-old dump goes, the one a restore took of the
    database it replaced too; a 13-day-old one stays."""
    old = f"{BACKUP_DIR}/plinth-20000101T000000Z.dump"
    old_pre_restore = f"{BACKUP_DIR}/{PRE_RESTORE_PREFIX}plinth-20000101T000000Z.dump"
    young = f"{BACKUP_DIR}/plinth-20000102T000000Z.dump"
    for path, age in ((old, 30), (old_pre_restore, 30), (young, 13)):
        host.check_output(f"runuser -u postgres -- touch -d '{age} days ago' {path}")
    _run_backup(host)
    assert not host.file(old).exists
    assert not host.file(old_pre_restore).exists
    assert host.file(young).exists
    host.check_output(f"rm -f {young}")


def test_restore_drill_brings_back_a_deleted_prediction(host, rehearsal):
    status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = str(uuid.UUID(body["predictions"][0]["id"]))
    dump = _run_backup(host)
    delete = f"delete from predictions where id = '{prediction_id}'"  # noqa: S608 (a UUID)
    host.check_output(f'runuser -u postgres -- psql -d plinth -tAc "{delete}"')
    assert request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")[0] == 404

    # A dump outside backup_dir that only root may read (root opens it for pg_restore).
    copy = "/root/plinth-drill.dump"
    host.check_output(f"install -m 600 -o root -g root {dump} {copy}")
    before = set(host.check_output(f"ls {BACKUP_DIR}").split())
    started = time.monotonic()
    result = _restore(copy)  # a file name in backup_dir or an absolute path; unset: the newest
    assert result.returncode == 0, result.stderr[-2000:]
    host.check_output(f"rm -f {copy}")
    deadline = time.monotonic() + 10
    while request(rehearsal, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready after the restore"
        time.sleep(0.2)
    print(f"\nrestore (deploy run included): {time.monotonic() - started:.1f} s")
    status, _, body = request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")
    assert status == 200, body
    assert body["id"] == prediction_id
    # The database as it was before the restore, dumped first (so a wrong restore is undone).
    (taken,) = set(host.check_output(f"ls {BACKUP_DIR}").split()) - before
    assert taken.startswith(f"{PRE_RESTORE_PREFIX}plinth-") and taken.endswith(".dump")
    assert taken in result.stdout + result.stderr
    pre_restore = host.file(f"{BACKUP_DIR}/{taken}")
    assert (pre_restore.user, pre_restore.mode) == ("postgres", 0o600)
    listing = host.check_output(f"runuser -u postgres -- pg_restore --list {pre_restore.path}")
    assert "TABLE DATA public predictions" in listing
    # ... and never taken for "the newest dump" by a restore that names none.
    assert _run_backup(host).rsplit("/", 1)[-1].startswith("plinth-")


def test_restore_of_a_missing_dump_fails_and_leaves_the_service_up(host, rehearsal):
    result = _restore("plinth-19990101T000000Z.dump")
    assert result.returncode != 0
    assert "no such dump: /var/backups/plinth/plinth-19990101T000000Z.dump" in result.stderr
    assert request(rehearsal, "GET", "/readyz")[0] == 200


def test_a_restore_that_fails_midway_changes_nothing_and_the_service_comes_back(host, rehearsal):
    """A truncated dump: pg_restore fails after it began dropping (--clean), so the whole
    restore rolls back (one transaction), and the service, stopped for it, starts again."""
    status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = body["predictions"][0]["id"]
    good = _run_backup(host)
    corrupt = f"{BACKUP_DIR}/plinth-corrupt.dump"
    size = int(host.check_output(f"stat -c %s {good}"))
    host.check_output(
        f"head -c {size * 2 // 3} {good} > {corrupt} && chown postgres:postgres {corrupt}"
    )
    try:
        result = _restore("plinth-corrupt.dump")
    finally:
        host.check_output(f"rm -f {corrupt}")
    assert result.returncode != 0
    assert "restore failed" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    deadline = time.monotonic() + 10
    while request(rehearsal, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready after the failed restore"
        time.sleep(0.2)
    status, _, body = request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")
    assert status == 200, body


def _service_invocation(host) -> str:
    return host.check_output(f"systemctl show -p InvocationID --value {layout.SERVICE_UNIT}")


def test_on_a_split_topology_the_app_hosts_stop_around_the_db_hosts_restore(host, rehearsal):
    """Each side of a split topology (the database on a host of its own), played by the one
    host in one group at a time (PLINTH_REHEARSAL_ROLES). An app host's part stops the service
    and starts it again and leaves the database alone; the db host's part restores without a
    word to the service's units, which a database host does not have. In one run over both
    hosts pyinfra runs the app hosts' stop, the db host's restore, the app hosts' start."""
    status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = body["predictions"][0]["id"]
    dump = _run_backup(host).rsplit("/", 1)[-1]
    delete = f"delete from predictions where id = '{prediction_id}'"  # noqa: S608 (a UUID)
    host.check_output(f'runuser -u postgres -- psql -d plinth -tAc "{delete}"')
    dumps = host.check_output(f"ls {BACKUP_DIR}")

    invocation = _service_invocation(host)
    app_side = _restore(dump, roles="app")
    assert app_side.returncode == 0, app_side.stderr[-2000:]
    assert _service_invocation(host) != invocation  # stopped, then started again
    deadline = time.monotonic() + 10
    while request(rehearsal, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready after the app host's part"
        time.sleep(0.2)
    assert request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")[0] == 404
    assert host.check_output(f"ls {BACKUP_DIR}") == dumps  # nothing dumped, nothing restored

    invocation = _service_invocation(host)
    db_side = _restore(dump, roles="db")
    assert db_side.returncode == 0, db_side.stderr[-2000:]
    assert request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")[0] == 200
    assert _service_invocation(host) == invocation  # never stopped
