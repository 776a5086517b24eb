"""The split topology (infra/inventories/group_data/db.py) on two rehearsal hosts: the service
on one, PostgreSQL on the other, reached over their network without NAT
(infra/inventories/rehearsal_split.py). Deployed as the docs say: the database host first, its
two role passwords copied to the service host through a pipe, then both hosts in one run.
The hosts are this module's own; it boots them and takes them down."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid

import pytest

from infra.deploys import layout
from infra.deploys.postgres import DB_CONNECTION_DEFAULTS
from infra.rehearsal.inventory import host_data
from tests.infra.conftest import REPO, DeployRun, run_deploy
from tests.infra.https_client import IRIS, PREDICT_PATH, request

pytestmark = pytest.mark.infra

INVENTORY = "infra/inventories/rehearsal_split.py"
SUBNETS = {"app": "10.213.6.0/24", "db": "10.213.7.0/24"}
PORT = DB_CONNECTION_DEFAULTS["db_port"]
PASSWORDS = (layout.DB_PASSWORD_FILE, layout.DB_OWNER_PASSWORD_FILE)


def _tool_env(role: str) -> dict[str, str]:
    """The rehearsal tool's settings for one of the two hosts (rehearsal_split.py's defaults)."""
    peer = SUBNETS["db" if role == "app" else "app"]
    return {
        **os.environ,
        "PLINTH_REHEARSAL_DIR": str(REPO / f".rehearsal-split-{role}"),
        "PLINTH_REHEARSAL_NAME": f"plinth-split-{role}",
        "PLINTH_REHEARSAL_SUBNET": SUBNETS[role],
        "PLINTH_REHEARSAL_PEERS": peer,
        "PLINTH_REHEARSAL_RELEASE": "bookworm",
    }


def _tool(role: str, command: str) -> None:
    argv = [sys.executable, "-m", "infra.rehearsal", command]
    subprocess.run(argv, cwd=REPO, env=_tool_env(role), check=True)


def ssh_argv(info: dict, command: str) -> list[str]:
    """`command` as root on the host, logged in as the inventory would (root on a fresh host,
    the deploy user with sudo once a deploy made it)."""
    user = host_data(REPO / f".rehearsal-split-{info['role']}" / "host.json")["ssh_user"]
    root = f"sh -c {shlex.quote(command)}"
    argv = ["ssh", "-F", info["ssh_config"], "-o", "LogLevel=ERROR", "-l", user, "rehearsal"]
    return [*argv, root if user == "root" else f"sudo -n {root}"]


def ssh(info: dict, command: str) -> str:
    run = subprocess.run(ssh_argv(info, command), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{command}: {run.stderr[-1000:]}"
    return run.stdout.strip()


def deploy(*extra: str, entry: str = "infra/deploys/site.py", **env: str) -> DeployRun:
    os.environ.update(env)
    try:
        return run_deploy(*extra, inventory=INVENTORY, entry=entry)
    finally:
        for key in env:
            os.environ.pop(key, None)


@pytest.fixture(scope="module")
def hosts():
    """{"app": host.json, "db": host.json} of the two hosts, booted here and removed after."""
    booted = {}
    try:
        for role in SUBNETS:
            _tool(role, "up")
            path = REPO / f".rehearsal-split-{role}" / "host.json"
            booted[role] = {**json.loads(path.read_text()), "role": role}
        yield booted
    finally:
        if not os.environ.get("PLINTH_KEEP_REHEARSAL"):
            for role in SUBNETS:
                _tool(role, "down")


@pytest.fixture(scope="module")
def deployed(hosts) -> DeployRun:
    """The order group_data/db.py gives: the database host, its passwords copied to the
    service host (root to root through a pipe: never on a command line, never on this
    machine's disk), then both hosts (here a broken first release before the good one)."""
    first = deploy("--limit", "rehearsal-db")
    assert first.returncode == 0, first.stderr[-3000:]
    for path in PASSWORDS:
        read = subprocess.Popen(ssh_argv(hosts["db"], f"cat {path}"), stdout=subprocess.PIPE)
        write = subprocess.run(
            ssh_argv(hosts["app"], f"install -D -m 600 /dev/stdin {path}"),
            stdin=read.stdout,
            capture_output=True,
        )
        read.stdout.close()
        assert read.wait() == 0 and write.returncode == 0, write.stderr
    # A first release that never gets ready: nothing runs to cut over from, so the first
    # start is health-checked by itself, and fails the deploy.
    broken = deploy(PLINTH_RELEASE_FAULT="readyz", PLINTH_RELEASE_REVISION="split-broken")
    assert broken.returncode != 0, broken.stderr[-3000:]
    assert "first start of" in broken.stderr and "readyz: HTTP 503" in broken.stderr, broken.stderr[
        -3000:
    ]
    both = deploy()
    assert both.returncode == 0, both.stderr[-3000:]
    return both


def test_the_service_keeps_its_predictions_in_the_other_hosts_database(hosts, deployed):
    app, db = hosts["app"], hosts["db"]
    assert request(app, "GET", "/readyz")[0] == 200
    status, _, body = request(app, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = str(uuid.UUID(body["predictions"][0]["id"]))
    query = f"select count(*) from predictions where id = '{prediction_id}'"  # noqa: S608
    assert ssh(db, f'runuser -u postgres -- psql -d plinth -tAc "{query}"') == "1"
    # Straight from the service host's address (no NAT between them), as pg_hba.conf admits.
    role = DB_CONNECTION_DEFAULTS["db_user"]
    clients = f"select distinct client_addr from pg_stat_activity where usename = '{role}'"  # noqa: S608
    assert ssh(db, f'runuser -u postgres -- psql -tAc "{clients}"').split() == [app["address"]]
    # Each host has its own part only.
    assert ssh(app, "systemctl is-active postgresql || true") != "active"
    assert ssh(db, f"systemctl list-unit-files --no-legend {layout.SERVICE_UNIT} | wc -l") == "0"
    listening = ssh(db, f"ss -Hltn 'sport = :{PORT}'").split()
    assert f"{db['address']}:{PORT}" in listening and f"127.0.0.1:{PORT}" not in listening


def test_the_database_host_admits_no_other_address(hosts, deployed):
    """pg_hba.conf admits the service host alone: a login from another address (the database
    host's own, over TCP) is refused before any password is asked."""
    db = hosts["db"]
    attempt = (
        f"runuser -u postgres -- psql -w 'host={db['address']} port={PORT} "
        f"user={DB_CONNECTION_DEFAULTS['db_user']} dbname=plinth' -c 'select 1' 2>&1 || true"
    )
    assert "no pg_hba.conf entry" in ssh(db, attempt)


def test_a_second_deploy_of_both_hosts_changes_nothing(hosts, deployed):
    again = deploy()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.totals["success"] == 0, again.stderr[-3000:]


def test_a_restore_over_both_hosts_stops_the_service_around_the_database_hosts_part(
    hosts, deployed
):
    """One `make restore` run over both: the service host stops its service, the database
    host restores, the service host starts again, in that order."""
    app, db = hosts["app"], hosts["db"]
    status, _, body = request(app, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = str(uuid.UUID(body["predictions"][0]["id"]))
    ssh(db, "systemctl start plinth-backup.service")
    delete = f"delete from predictions where id = '{prediction_id}'"  # noqa: S608 (a UUID)
    ssh(db, f'runuser -u postgres -- psql -d plinth -tAc "{delete}"')
    invocation = f"systemctl show -p InvocationID --value {layout.SERVICE_UNIT}"
    before = ssh(app, invocation)

    run = deploy(entry="infra/deploys/restore.py")
    assert run.returncode == 0, run.stderr[-3000:]
    steps = re.findall(r"\[(rehearsal-\w+)\]\s+Success", run.stderr)  # in the order they ran
    assert steps[-3:] == [
        "rehearsal-app",  # stop
        "rehearsal-db",  # restore
        "rehearsal-app",  # start
    ], run.stderr[-3000:]
    assert ssh(app, invocation) != before
    status, _, body = request(app, "GET", f"/v1/predictions/{prediction_id}")
    assert status == 200, body


def _revision(app: dict) -> str:
    status, _, body = request(app, "GET", "/version")
    assert status == 200, body
    return body["git_revision"]


def test_a_release_and_a_rollback_over_both_hosts_go_to_the_service_host_alone(hosts, deployed):
    """`make release-*` and `make rollback*` over the whole inventory: the database host is
    passed over (it used to fail the whole run), and nothing of a release lands there."""
    app, db = hosts["app"], hosts["db"]
    before, revision = _revision(app), f"split-{uuid.uuid4().hex[:8]}"
    release = deploy(entry="infra/deploys/release.py", PLINTH_RELEASE_REVISION=revision)
    assert release.returncode == 0, release.stderr[-3000:]
    assert _revision(app) == revision
    rollback = deploy(entry="infra/deploys/rollback.py")
    assert rollback.returncode == 0, rollback.stderr[-3000:]
    assert _revision(app) == before
    assert ssh(db, f"ls -A {layout.RELEASES_DIR} 2>/dev/null | wc -l") == "0"
