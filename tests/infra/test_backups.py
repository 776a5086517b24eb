"""Backups: the nightly timer, private dumps, and a restore drill through the restore deploy
(a prediction made, backed up, deleted, restored, found again)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.infra.conftest import INVENTORY, REPO, host_json_path
from tests.infra.https_client import IRIS, PREDICT_PATH, request

pytestmark = pytest.mark.infra

BACKUP_DIR = "/var/backups/plinth"


def _run_backup(host) -> str:
    host.check_output("systemctl start plinth-backup.service")  # oneshot: returns when done
    return host.check_output(f"ls -1t {BACKUP_DIR}/plinth-*.dump | head -n 1")


def _restore(dump_name: str | None):
    env = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path())}
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


def test_retention_removes_dumps_older_than_the_limit(host):
    old = f"{BACKUP_DIR}/plinth-20000101T000000Z.dump"
    host.check_output(f"runuser -u postgres -- touch -d '30 days ago' {old}")
    _run_backup(host)
    assert not host.file(old).exists


def test_restore_drill_brings_back_a_deleted_prediction(host, rehearsal):
    status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = str(uuid.UUID(body["predictions"][0]["id"]))
    dump = _run_backup(host)
    delete = f"delete from predictions where id = '{prediction_id}'"  # noqa: S608 (a UUID)
    host.check_output(f'runuser -u postgres -- psql -d plinth -tAc "{delete}"')
    assert request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")[0] == 404

    started = time.monotonic()
    result = _restore(dump.rsplit("/", 1)[-1])  # chosen by name; unset means the newest
    assert result.returncode == 0, result.stderr[-2000:]
    deadline = time.monotonic() + 10
    while request(rehearsal, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready after the restore"
        time.sleep(0.2)
    print(f"\nrestore (deploy run included): {time.monotonic() - started:.1f} s")
    status, _, body = request(rehearsal, "GET", f"/v1/predictions/{prediction_id}")
    assert status == 200, body
    assert body["id"] == prediction_id


def test_restore_of_a_missing_dump_fails_and_leaves_the_service_up(host, rehearsal):
    result = _restore("plinth-19990101T000000Z.dump")
    assert result.returncode != 0
    assert request(rehearsal, "GET", "/readyz")[0] == 200
