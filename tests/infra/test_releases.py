"""Releases on the rehearsal host (issue 5): zero-failure cutover under HTTPS traffic, the new
code really served (not only its release.json), automatic rollback of a broken release, the
rollback deploy, a unit restart under traffic, pruning and the deploy lock."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
from conftest import LOADGEN, REPO, SITE, host_json_path, run_deploy, ssh_argv

from infra.deploys import layout
from infra.deploys.cutover import DEPLOY_LOCK, NO_PYTHON, RELEASE_TOOL, WORK_LOCK
from infra.deploys.postgres import DB_CONNECTION_DEFAULTS
from infra.release.build import EXPAND_REVISION
from service.migrations import VERSION_TABLE
from tests.infra.https_client import IRIS, PREDICT_PATH, request

pytestmark = pytest.mark.infra

RELEASE = "infra/deploys/release.py"  # `make release-*`: the app deploy alone
MIGRATION_OP = "Migrations: plinth migrate"


class Traffic:
    """Keep-alive GET /version through nginx over HTTPS from 4 threads until stopped: every
    non-200, connection error or timeout (10 s) is a failure; served revisions are counted."""

    def __init__(self, rehearsal: dict, threads: int = 4):
        self.address, self.domain = rehearsal["address"], rehearsal["domain"]
        self.context = ssl.create_default_context(cafile=rehearsal["acme_root"])
        self.revisions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _connection(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.domain, context=self.context, timeout=10)
        raw = socket.create_connection((self.address, 443), timeout=10)
        conn.sock = self.context.wrap_socket(raw, server_hostname=self.domain)
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._connection()
                for _ in range(50):
                    conn.request("GET", "/version")
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 200:
                        self.failures.append(f"HTTP {response.status}")
                    else:
                        self.revisions[json.loads(body)["git_revision"]] += 1
                conn.close()
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(repr(error))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        time.sleep(1)
        self._stop.set()
        for thread in self._threads:
            thread.join()


def deploy_revision(revision: str, entry: str = SITE, data: tuple[str, ...] = (), **env: str):
    """Deploy a release built at `revision`; `data` overrides host data (`key=value`, as
    pyinfra's --data)."""
    os.environ.update(PLINTH_RELEASE_REVISION=revision, **env)
    try:
        return run_deploy(*(arg for item in data for arg in ("--data", item)), entry=entry)
    finally:
        for key in ("PLINTH_RELEASE_REVISION", *env):
            os.environ.pop(key, None)


def deployed(revision: str, entry: str = SITE, **env: str):
    """deploy_revision, for a step that must succeed: a failure names the deploy's own error
    instead of surfacing later as a wrong release."""
    run = deploy_revision(revision, entry=entry, **env)
    assert run.returncode == 0, f"deploy of {revision} failed:\n{run.stderr[-3000:]}"
    return run


def ssh(rehearsal, command: str) -> str:
    result = subprocess.run(ssh_argv(rehearsal, command), capture_output=True, text=True)
    return result.stdout.strip()


def served_release_dirs(rehearsal) -> set[str]:
    """Release dirs the running master and workers have mapped (their venv's own interpreter):
    proof of the code that runs, unlike release.json, which follows `current`."""
    out = ssh(
        rehearsal,
        f"for p in $(pgrep -u {layout.SERVICE_USER}); do cat /proc/$p/maps; done "
        f"| grep -o '{layout.RELEASES_DIR}/[^/]*' | sort -u",
    )
    return set(out.split())


def https_status(rehearsal, path: str) -> int:
    """The status of GET `path` through nginx over HTTPS, from the control machine."""
    conn = Traffic(rehearsal)._connection()
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def listing(rehearsal) -> list[str]:
    """The releases and artifacts on the host (a failed `ls` fails the test)."""
    command = f"ls -1 {layout.RELEASES_DIR} {layout.ARTIFACTS_DIR}"
    result = subprocess.run(ssh_argv(rehearsal, command), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def current_release(rehearsal) -> str:
    return ssh(rehearsal, f"readlink {layout.CURRENT_LINK}")


def goes_live_under_traffic(rehearsal, revision: str, entry: str = SITE):
    """Deploy `revision` under HTTPS traffic: no request fails, then only it is served, by
    its own code. Returns the deploy's run."""
    with Traffic(rehearsal) as traffic:
        run = deploy_revision(revision, entry=entry)
        assert run.returncode == 0, run.stderr[-2000:]
        with Traffic(rehearsal) as after:
            time.sleep(2)
    assert traffic.failures == [], traffic.failures[:5]
    assert set(after.revisions) == {revision}, after.revisions
    # The new code itself serves (a HUP would have kept the old venv in every worker).
    assert served_release_dirs(rehearsal) == {current_release(rehearsal)}
    return run


def test_a_new_release_goes_live_with_zero_failed_requests(first_deploy, rehearsal):
    goes_live_under_traffic(rehearsal, "test-one")


def operations_run(run) -> list[str]:
    """The operations a deploy planned, as pyinfra names them ("App | ...")."""
    return [
        line.split("--> Starting operation: ", 1)[1].strip()
        for line in run.stderr.splitlines()
        if "--> Starting operation: " in line
    ]


def operations_changed(run) -> list[str]:
    """The operations that changed something on the host (pyinfra's "success"), by name."""
    operations = json.loads(run.stdout)["results"]["operations"]
    return [op["name"] for op in operations if op["success"]]


def test_an_app_only_release_goes_live_with_zero_failed_requests(first_deploy, rehearsal):
    """`make release-*`: the app deploy alone, the same cutover; the schema is at the
    release's head already, so no migration runs."""
    run = goes_live_under_traffic(rehearsal, "test-app-only", entry=RELEASE)
    operations = operations_run(run)
    assert operations and all(op.startswith("App | ") for op in operations), operations
    assert not [op for op in operations if MIGRATION_OP in op], operations
    again = deploy_revision("test-app-only", entry=RELEASE)
    assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-2000:]


def test_a_schema_not_known_to_be_at_the_release_head_is_migrated(first_deploy, rehearsal):
    """The skip needs proof: when the version table cannot be read as the service role, the
    deploy runs `plinth migrate` (and the database deploy restores the grant)."""
    service_role = DB_CONNECTION_DEFAULTS["db_user"]  # the rehearsal inventory keeps it
    psql(rehearsal, f"REVOKE SELECT ON {VERSION_TABLE} FROM {service_role}")  # noqa: S608
    run = deploy_revision("test-migrate")
    assert run.returncode == 0, run.stderr[-2000:]
    assert [op for op in operations_run(run) if MIGRATION_OP in op], operations_run(run)
    assert https_status(rehearsal, "/readyz") == 200


def test_a_release_that_does_not_import_stops_before_the_host_is_touched(first_deploy, rehearsal):
    """The preflight on the control machine installs the artifact into a clean virtualenv,
    imports it and asks /healthz in process: a release that does not import ends the deploy
    in one line, and no operation runs on the host."""
    before, installed = current_release(rehearsal), listing(rehearsal)
    run = deploy_revision("test-no-import", PLINTH_RELEASE_FAULT="import")
    assert run.returncode != 0
    (message,) = [line for line in run.stderr.splitlines() if "pyinfra error" in line]
    assert "release preflight: import and GET /healthz" in message, message
    assert "this release does not import" in message, message
    assert "Starting operation" not in run.stderr, operations_run(run)
    assert "Traceback" not in run.stderr
    assert current_release(rehearsal) == before
    assert listing(rehearsal) == installed


def failed_under_traffic(rehearsal, revision: str, fault: str, data=()) -> tuple[str, Traffic]:
    """A deploy of `revision` built with PLINTH_RELEASE_FAULT=`fault`, under HTTPS traffic,
    which must fail: its one error line, and the traffic."""
    with Traffic(rehearsal) as traffic:
        run = deploy_revision(revision, SITE, data, PLINTH_RELEASE_FAULT=fault)
    assert run.returncode != 0, run.stderr[-2000:]
    (message,) = [line for line in run.stderr.splitlines() if "plinth-release: error:" in line]
    return message, traffic


def test_a_release_that_fails_readiness_is_rolled_back(first_deploy, rehearsal):
    deployed("test-one")
    before = current_release(rehearsal)
    message, traffic = failed_under_traffic(rehearsal, "test-broken", "readyz")
    # One line names the failed check and the health-checked switch back.
    assert "health check through nginx" in message and "readyz: HTTP 503" in message, message
    assert f"rolled back to {before.rsplit('/', 1)[-1]}, which serves again" in message, message
    assert "(readyz 200, version test-one)" in message, message
    assert traffic.failures == [], traffic.failures[:5]
    assert current_release(rehearsal) == before
    # The previous release's own code serves (not only `current`), ready, at its revision.
    assert served_release_dirs(rehearsal) == {before}
    with Traffic(rehearsal) as after:
        time.sleep(2)
    assert set(after.revisions) == {"test-one"}, after.revisions
    assert https_status(rehearsal, "/readyz") == 200


def test_a_release_whose_startup_fails_on_the_host_never_takes_over(first_deploy, rehearsal):
    """Its app's startup fails under systemd only, after the control machine's preflight
    passed it: the new master must not become the service's main process, so the running
    one is never stopped, no request fails, and the deploy fails naming the new master."""
    deployed("test-one")
    before = current_release(rehearsal)
    message, traffic = failed_under_traffic(rehearsal, "test-startup", "startup")
    assert "the new Gunicorn master exited before serving" in message, message
    assert traffic.failures == [], traffic.failures[:5]
    assert current_release(rehearsal) == before
    assert served_release_dirs(rehearsal) == {before}
    assert set(traffic.revisions) == {"test-one"}, traffic.revisions


def test_a_switch_back_right_after_a_failed_cutover_reaches_the_old_release(
    first_deploy, rehearsal
):
    """A health check that gives up after 1 s: the switch back re-executes the broken master
    while it may not have taken over from the old one yet, when Gunicorn ignores the re-exec
    signal. It is sent again until taken, so the old release serves again (it waited out the
    start timeout, then said ROLLBACK FAILED while the broken release served)."""
    deployed("test-one")
    before = current_release(rehearsal)
    message, traffic = failed_under_traffic(
        rehearsal, "test-quick-fail", "readyz", data=("release_health_timeout=1",)
    )
    assert f"rolled back to {before.rsplit('/', 1)[-1]}, which serves again" in message, message
    assert traffic.failures == [], traffic.failures[:5]
    assert served_release_dirs(rehearsal) == {before}


def test_a_deploy_of_current_while_another_release_runs_cuts_over_to_it(first_deploy, rehearsal):
    """`current` names a release that went live while the service runs another (a switch back
    that failed leaves it so): a deploy of `current`'s release is not done already, it re-
    executes the service from it, and pruning never takes the release that runs."""
    deployed("test-one")
    first = current_release(rehearsal)
    deployed("test-two")
    second = current_release(rehearsal)
    link = layout.CURRENT_LINK  # switched back by hand, the running master left as it was
    ssh(rehearsal, f"ln -sfn {first} {link}.new && mv -T {link}.new {link}")
    assert served_release_dirs(rehearsal) == {second}
    with Traffic(rehearsal) as traffic:
        deployed("test-one")
    assert current_release(rehearsal) == first
    assert served_release_dirs(rehearsal) == {first}
    assert traffic.failures == [], traffic.failures[:5]


def test_a_cutover_while_the_service_is_still_starting_waits_for_it(first_deploy, rehearsal):
    """Until Gunicorn's master has set its signal handlers (it is still importing), a USR2
    kills it: a cutover then (a rollback during a restart or a crash loop) waits for the
    service to be up, then re-executes it, and nothing is killed."""
    deployed("test-one")
    first = current_release(rehearsal)
    deployed("test-two")
    since = ssh(rehearsal, "date +%s")
    unit = layout.SERVICE_UNIT
    said = ssh(
        rehearsal,
        f"systemctl stop {unit} && systemctl start --no-block {unit} && "
        f"{RELEASE_TOOL} cutover {first} 2>&1; echo exit=$?",
    )
    assert said.endswith("exit=0"), said
    assert current_release(rehearsal) == first
    journal = ssh(rehearsal, f"journalctl -u {unit} --since @{since} -o cat")
    assert "code=killed" not in journal, journal[-2000:]
    assert served_release_dirs(rehearsal) == {first}


def test_a_cutover_a_stopped_run_left_unjudged_is_judged_by_the_next_deploy(
    first_deploy, rehearsal
):
    """A run stopped (killed, its connection lost, the host rebooted) between switching
    `current` and the health check's verdict: `current` names a release that never went
    live while the old one still serves. The next deploy of that release judges it as a
    cutover does; here it fails readiness, so the release that last went live serves again
    and the deploy fails. (`current` already named it, so deploys passed over it, green, and
    the next restart would have served the broken release.)"""
    deployed("test-one")
    before = current_release(rehearsal)
    failed = deploy_revision("test-unjudged", PLINTH_RELEASE_FAULT="readyz")
    assert failed.returncode != 0, failed.stderr[-2000:]
    broken = ssh(rehearsal, f"ls -1td {layout.RELEASES_DIR}/*test-unju* | head -n 1")
    assert broken and current_release(rehearsal) == before
    link = layout.CURRENT_LINK  # the stopped run: switched, nothing after
    ssh(rehearsal, f"ln -sfn {broken} {link}.new && mv -T {link}.new {link}")
    with Traffic(rehearsal) as traffic:
        run = deploy_revision("test-unjudged", PLINTH_RELEASE_FAULT="readyz")
    assert run.returncode != 0, run.stderr[-3000:]
    (message,) = [line for line in run.stderr.splitlines() if "plinth-release: error:" in line]
    assert "readyz: HTTP 503" in message, message
    assert f"rolled back to {before.rsplit('/', 1)[-1]}, which serves again" in message, message
    assert traffic.failures == [], traffic.failures[:5]
    assert current_release(rehearsal) == before
    assert https_status(rehearsal, "/readyz") == 200
    # Stopped so again, then another release deployed, which fails too: its way back is the
    # release that last went live, not the unjudged one `current` named.
    ssh(rehearsal, f"ln -sfn {broken} {link}.new && mv -T {link}.new {link}")
    with Traffic(rehearsal) as traffic:
        run = deploy_revision("test-other", PLINTH_RELEASE_FAULT="readyz")
    (message,) = [line for line in run.stderr.splitlines() if "plinth-release: error:" in line]
    assert f"rolled back to {before.rsplit('/', 1)[-1]}, which serves again" in message, message
    assert traffic.failures == [], traffic.failures[:5]
    assert current_release(rehearsal) == before


def _served_revision_any_certificate(rehearsal) -> str:
    """/version's revision through nginx over HTTPS, asked on the host, trusting any
    certificate (a self-signed one included)."""
    domain = rehearsal["domain"]
    body = ssh(
        rehearsal,
        f"curl -sk --resolve {domain}:443:127.0.0.1 https://{domain}/version",
    )
    return json.loads(body)["git_revision"]


def test_a_release_and_a_tls_mode_change_in_one_deploy_go_live(first_deploy, rehearsal):
    """The release's health check goes through the HTTPS server the same deploy sets up: a
    new release together with another certificate (self-signed, then ACME again) passes it."""
    try:
        os.environ["PLINTH_RELEASE_REVISION"] = "test-tls-self"
        run = run_deploy("--data", "tls_mode=self-signed")
        assert run.returncode == 0, run.stderr[-3000:]
        assert _served_revision_any_certificate(rehearsal) == "test-tls-self"
    finally:
        os.environ.pop("PLINTH_RELEASE_REVISION", None)
        back = deploy_revision("test-tls-acme")  # the inventory's ACME again
    assert back.returncode == 0, back.stderr[-3000:]
    assert _served_revision_any_certificate(rehearsal) == "test-tls-acme"
    assert https_status(rehearsal, "/readyz") == 200  # the ACME certificate, verified


def rollback(**env: str) -> subprocess.CompletedProcess:
    """`make rollback` (PLINTH_ROLLBACK_TO=... in `env` names the release)."""
    env = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path()), **env}
    args = [sys.executable, "-m", "pyinfra", "-y", "infra/inventories/rehearsal.py"]
    return subprocess.run(
        [*args, "infra/deploys/rollback.py"], cwd=REPO, env=env, capture_output=True, text=True
    )


class HostPredictions:
    """Predictions POSTed through nginx over HTTPS for `seconds`, from the host itself (on
    loopback the per-client rate limit does not apply): bench/loadgen.py, 4 keep-alive
    connections. `result` once stopped: its requests, errors and statuses."""

    def __init__(self, rehearsal: dict, seconds: float):
        domain = rehearsal["domain"]
        self.argv = ssh_argv(
            rehearsal,
            shlex.join([
                "python3", "-", f"tls:127.0.0.1:443:{domain}", "POST", PREDICT_PATH,
                "--host", domain, "--connections", "4", "--seconds", str(seconds),
                "--warmup", "0.5", "--body", json.dumps({"inputs": [IRIS]}),
            ]),
        )  # fmt: skip
        self.result: dict = {}

    def __enter__(self):
        with LOADGEN.open("rb") as script:
            self._run = subprocess.Popen(self.argv, stdin=script, stdout=subprocess.PIPE)
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        out, _ = self._run.communicate(timeout=120)
        self.result = json.loads(out) if out.strip() else {"errors": "no result"}


def rollback_under_traffic(rehearsal, **env: str) -> tuple[Traffic, Traffic]:
    """`make rollback` under HTTPS traffic; the traffic during it and just after."""
    with Traffic(rehearsal) as traffic:
        run = rollback(**env)
        assert run.returncode == 0, run.stderr[-2000:]
        with Traffic(rehearsal) as after:
            time.sleep(2)
    return traffic, after


def test_predictions_during_a_release_and_a_rollback_all_succeed(first_deploy, rehearsal):
    """POSTs too: a worker that leaves closes its idle keep-alive connections, and a
    prediction nginx had just sent on one must be retried, not answered 502 (GETs always
    were)."""
    deployed("test-one", entry=RELEASE)
    with HostPredictions(rehearsal, seconds=30) as predictions:
        deployed(f"test-posts-{uuid.uuid4().hex[:7]}", entry=RELEASE)
        run = rollback()
        assert run.returncode == 0, run.stderr[-2000:]
    assert predictions.result["errors"] == 0, predictions.result
    assert predictions.result["requests"] > 1000, predictions.result


def test_rollback_goes_to_the_previous_release_with_zero_failed_requests(first_deploy, rehearsal):
    deployed("test-one")
    deployed("test-two")
    traffic, after = rollback_under_traffic(rehearsal)
    assert traffic.failures == [], traffic.failures[:5]
    assert set(after.revisions) == {"test-one"}, after.revisions


def test_rollback_to_a_named_release_serves_it_with_zero_failed_requests(first_deploy, rehearsal):
    deployed("test-named")
    named = current_release(rehearsal).rsplit("/", 1)[-1]
    deployed("test-after-named-1")
    deployed("test-after-named-2")
    traffic, after = rollback_under_traffic(rehearsal, PLINTH_ROLLBACK_TO=named)
    assert traffic.failures == [], traffic.failures[:5]
    assert set(after.revisions) == {"test-named"}, after.revisions
    assert current_release(rehearsal) == f"{layout.RELEASES_DIR}/{named}"


def test_a_rollback_while_the_service_is_down_starts_it_and_checks_it(first_deploy, rehearsal):
    """The service stopped (or given up on by systemd after a crash loop), socket too: the
    rollback starts it from the release it goes to, and the same health check judges it."""
    deployed("test-down-one")
    deployed("test-down-two")
    ssh(rehearsal, f"systemctl stop {layout.SOCKET_UNIT} {layout.SERVICE_UNIT}")
    assert https_status(rehearsal, "/readyz") == 502  # nothing behind nginx
    run = rollback()
    assert run.returncode == 0, run.stderr[-2000:]
    assert ssh(rehearsal, f"systemctl is-active {layout.SOCKET_UNIT} {layout.SERVICE_UNIT}") == (
        "active\nactive"
    )
    with Traffic(rehearsal) as after:
        time.sleep(2)
    assert after.failures == [], after.failures[:5]
    assert set(after.revisions) == {"test-down-one"}, after.revisions
    assert served_release_dirs(rehearsal) == {current_release(rehearsal)}


def test_a_rollback_that_cannot_start_any_release_fails_in_one_line(first_deploy, rehearsal):
    """Every release fails to start (a setting none accepts, as a broken env file by hand):
    the rollback starts the target, then the previous one, and ends with the one line that
    says neither serves; no traceback. The service's start limit does not stop the tries."""
    deployed("test-nostart-1")
    deployed("test-nostart-2")
    env = layout.ENV_FILE
    ssh(rehearsal, f"cp -p {env} {env}.test && echo PLINTH_WORKERS=many >> {env}")
    try:
        ssh(rehearsal, f"systemctl stop {layout.SOCKET_UNIT} {layout.SERVICE_UNIT}")
        run = rollback()
        assert run.returncode != 0
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        (line,) = [line for line in run.stderr.splitlines() if "plinth-release: error:" in line]
        assert "ROLLBACK FAILED" in line, line
    finally:
        ssh(rehearsal, f"mv -f {env}.test {env}")
    assert deploy_revision("test-nostart-3").returncode == 0  # the next deploy starts it
    assert https_status(rehearsal, "/readyz") == 200


def test_rollback_to_a_release_not_installed_fails_in_one_line(first_deploy, rehearsal):
    before = current_release(rehearsal)
    run = rollback(PLINTH_ROLLBACK_TO="0.1.0-nowhere")
    assert run.returncode != 0
    (message,) = [line for line in run.stderr.splitlines() if "pyinfra error" in line]
    assert "no installed release '0.1.0-nowhere' (installed: " in message, message
    assert before.rsplit("/", 1)[-1] in message, message  # it lists what there is
    assert "Starting operation" not in run.stderr
    assert current_release(rehearsal) == before


def psql(rehearsal, sql: str) -> str:
    db = DB_CONNECTION_DEFAULTS["db_name"]  # the rehearsal inventory keeps it
    return ssh(rehearsal, f"runuser -u postgres -- psql -tAq -d {db} -c {shlex.quote(sql)}")


def test_a_rollback_across_an_expand_migration_serves_with_zero_failed_requests(
    first_deploy, rehearsal
):
    """What docs/releases.md promises: a newer release expands the schema; the rollback runs
    no migration, and the release before it, which does not know the newer revision, is ready
    on the expanded schema and serves. Deployed again later (a fix on the old line), it finds
    the database ahead of it and migrates nothing."""
    schema_at = f"SELECT version_num FROM {VERSION_TABLE}"  # noqa: S608 (ours)
    head = psql(rehearsal, schema_at)
    try:
        deployed("test-before-expand")
        before = current_release(rehearsal)
        expanded = deploy_revision("test-expand", PLINTH_RELEASE_FAULT="expand")
        assert expanded.returncode == 0, expanded.stderr[-2000:]
        assert psql(rehearsal, schema_at) == EXPAND_REVISION
        traffic, after = rollback_under_traffic(rehearsal)
        assert traffic.failures == [], traffic.failures[:5]
        assert set(after.revisions) == {"test-before-expand"}, after.revisions
        assert current_release(rehearsal) == before
        assert https_status(rehearsal, "/readyz") == 200
        again = deploy_revision("test-after-rollback")
        assert again.returncode == 0, again.stderr[-2000:]
        assert https_status(rehearsal, "/readyz") == 200
        assert psql(rehearsal, schema_at) == EXPAND_REVISION  # nothing undone, nothing re-run
    finally:  # the contract step by hand, for the tests after this one
        psql(rehearsal, "ALTER TABLE predictions DROP COLUMN IF EXISTS rehearsal_expand")
        psql(rehearsal, f"UPDATE {VERSION_TABLE} SET version_num = '{head}'")  # noqa: S608


@pytest.mark.parametrize("with_release", [False, True], ids=["alone", "with-a-new-release"])
def test_settings_that_fail_the_health_check_are_put_back(first_deploy, rehearsal, with_release):
    """A setting the service accepts but cannot serve with (a database URL to a port nothing
    listens on), alone or with a new release: the health check fails (/readyz 503), the
    previous settings (and release) come back and serve again, and the deploy fails naming
    both; GET /version meanwhile never fails. The inventory's own settings deploy again after."""
    assert run_deploy().returncode == 0  # the tree's own release, the inventory's settings
    env_file, before = ssh(rehearsal, f"sha256sum {layout.ENV_FILE}"), current_release(rehearsal)
    unreachable = {"DATABASE_URL": "postgresql+psycopg://plinth:unreachable-db@127.0.0.1:1/plinth"}
    if with_release:
        os.environ["PLINTH_RELEASE_REVISION"] = "test-bad-settings"
    try:
        with Traffic(rehearsal) as traffic:
            run = run_deploy("--data", f"app_extra_env={json.dumps(unreachable)}")
    finally:
        os.environ.pop("PLINTH_RELEASE_REVISION", None)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if "plinth-release: error:" in line]
    assert len(lines) == 1, run.stderr[-3000:]
    assert "health check through nginx" in lines[0] and "readyz: HTTP 503" in lines[0], lines[0]
    if with_release:
        back = f"rolled back to {before.rsplit('/', 1)[-1]} with the previous settings"
        assert f"{back}, which serves again" in lines[0], lines[0]
    else:
        assert "new settings: " in lines[0], lines[0]
        assert "the previous settings are back and serve again" in lines[0], lines[0]
    assert traffic.failures == [], traffic.failures[:5]
    assert ssh(rehearsal, f"sha256sum {layout.ENV_FILE}") == env_file
    assert current_release(rehearsal) == before
    assert https_status(rehearsal, "/readyz") == 200
    again = run_deploy()
    assert again.returncode == 0, again.stderr[-2000:]
    assert ssh(rehearsal, f"sha256sum {layout.ENV_FILE}") == env_file
    assert https_status(rehearsal, "/readyz") == 200


def _batch_of_five(rehearsal) -> int:
    return request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS] * 5})[0]


def test_settings_a_stopped_run_left_unapplied_are_applied_by_the_next_deploy(
    first_deploy, rehearsal
):
    """A run that replaced the env file and stopped before its settings served (killed before
    its cutover, say): the file is up to date from then on, so only the record of the settings
    that last served (APPLIED_DIR/env) tells the next deploy to re-exec with them,
    health-checked. Here a batch limit of 4 served before that run; the inventory's is 64."""
    assert run_deploy().returncode == 0
    env, kept, record = layout.ENV_FILE, "/root/plinth.env.deployed", f"{layout.APPLIED_DIR}/env"
    ssh(
        rehearsal,
        f"cp -a {env} {kept} && sed -i 's/^PLINTH_MAX_BATCH_SIZE=.*/PLINTH_MAX_BATCH_SIZE=4/' {env}"
        f" && sha1sum {env} | cut -d ' ' -f 1 > {record} && {RELEASE_TOOL} reload-settings",
    )
    try:
        assert _batch_of_five(rehearsal) == 413
        # The stopped run: the inventory's settings on disk, never served.
        ssh(rehearsal, f"cp -a {kept} {env}")
        assert _batch_of_five(rehearsal) == 413
        run = run_deploy()
        assert run.returncode == 0, run.stderr[-3000:]
        assert _batch_of_five(rehearsal) == 200
        again = run_deploy()
        assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-3000:]
    finally:
        ssh(rehearsal, f"cp -a {kept} {env} && rm -f {kept}")


def test_a_failed_settings_change_goes_back_to_settings_that_served(first_deploy, rehearsal):
    """After a stopped run left settings on disk that never served (a batch limit of 4 here),
    the next deploy's settings fail their health check: the rollback goes back to the
    settings that served (the inventory's), not to the ones that never did."""
    assert run_deploy().returncode == 0
    env, kept = layout.ENV_FILE, "/root/plinth.env.served"
    served = ssh(rehearsal, f"cp -a {env} {kept} && sha256sum < {env}")
    ssh(rehearsal, f"sed -i 's/^PLINTH_MAX_BATCH_SIZE=.*/PLINTH_MAX_BATCH_SIZE=4/' {env}")
    unreachable = {"DATABASE_URL": "postgresql+psycopg://plinth:unreachable-db@127.0.0.1:1/plinth"}
    try:
        run = run_deploy("--data", f"app_extra_env={json.dumps(unreachable)}")
        assert run.returncode != 0
        assert "the previous settings are back and serve again" in run.stderr, run.stderr[-3000:]
        back = ssh(rehearsal, f"grep -h MAX_BATCH_SIZE {env} {layout.ENV_FILE_PREVIOUS}")
        assert ssh(rehearsal, f"sha256sum < {env}") == served, (back, run.stderr[-2000:])
        assert _batch_of_five(rehearsal) == 200, run.stderr[-2000:]
    finally:
        ssh(rehearsal, f"cp -a {kept} {env} && rm -f {kept}")
    again = run_deploy()
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_failed_migration_leaves_the_settings_that_serve(first_deploy, rehearsal):
    """A release whose migration fails, deployed with new settings (a batch limit of 4): the
    deploy fails at the migration with its one line, before the env file is written, so the
    settings that serve stay on disk: a restart meanwhile (a reboot, say) starts the old
    release with them, not with settings only the new release was checked with."""
    assert run_deploy().returncode == 0
    env_file, before = ssh(rehearsal, f"sha256sum {layout.ENV_FILE}"), current_release(rehearsal)
    run = deploy_revision(
        "test-migrate-fails", data=("app_max_batch_size=4",), PLINTH_RELEASE_FAULT="migrate"
    )
    assert run.returncode != 0
    assert "migration failed: ProgrammingError" in run.stderr, run.stderr[-3000:]
    assert "rehearsal_no_such_table" in run.stderr and "Traceback" not in run.stderr
    assert ssh(rehearsal, f"sha256sum {layout.ENV_FILE}") == env_file
    assert current_release(rehearsal) == before
    ssh(rehearsal, f"systemctl restart {layout.SERVICE_UNIT}")
    assert _batch_of_five(rehearsal) == 200  # the inventory's limit (64), not the 4
    again = run_deploy()
    assert again.returncode == 0, again.stderr[-3000:]
    assert ssh(rehearsal, f"sha256sum {layout.ENV_FILE}") == env_file


def test_a_restart_of_the_unit_refuses_no_request(first_deploy, rehearsal):
    """After a cutover too, when systemd's main PID is the re-executed master it did not
    fork: every process is stopped gracefully (TERM, in-flight requests finish), none KILLed."""
    deployed("test-restart")
    since = ssh(rehearsal, "date +%s")
    with Traffic(rehearsal) as traffic:
        ssh(rehearsal, f"systemctl restart {layout.SERVICE_UNIT}")
        time.sleep(3)
    assert traffic.failures == [], traffic.failures[:5]
    assert sum(traffic.revisions.values()) > 100
    journal = ssh(rehearsal, f"journalctl -u {layout.SERVICE_UNIT} --since @{since} -o cat")
    assert "Started" in journal, journal[-2000:]
    killed = [line for line in journal.splitlines() if "SIGKILL" in line or "status=9" in line]
    assert killed == [], killed


def test_a_restart_for_a_changed_unit_is_health_checked(first_deploy, rehearsal):
    """A deploy that changes the service unit (one more address it may reach, here) restarts
    the service and checks it as a cutover is. Here the service cannot come back (its model
    unreadable, as a sandbox or limit it cannot live with would do): the deploy fails in one
    line, and the next deploy (the unit unchanged since) restarts and checks it again, until
    it passes once."""
    assert run_deploy().returncode == 0
    unit = f"{layout.SYSTEMD_UNIT_DIR}/{layout.SERVICE_UNIT}"
    record = f"{layout.APPLIED_DIR}/{layout.SERVICE_UNIT}"
    model = f"{layout.CURRENT_LINK}/venv/lib/python3*/site-packages/service/artifacts/iris"
    restart = "App | Restart the service (its unit changed), health check"
    wider = ("--data", 'app_ip_address_allow=["192.0.2.10"]')
    ssh(rehearsal, f"chmod 000 {model}")
    try:
        failed = run_deploy(*wider)
        assert failed.returncode != 0
        expected = f"{layout.SERVICE_UNIT} restarted for its changed unit: the restart failed"
        assert expected in failed.stderr, failed.stderr[-3000:]
        unit_sha1 = ssh(rehearsal, f"sha1sum {unit} | cut -d ' ' -f 1")
        assert ssh(rehearsal, f"cat {record}") != unit_sha1
    finally:
        ssh(rehearsal, f"chmod 755 {model}")
    again = run_deploy(*wider)
    assert again.returncode == 0, again.stderr[-3000:]
    assert restart in operations_changed(again)
    assert ssh(rehearsal, f"cat {record}") == unit_sha1
    assert https_status(rehearsal, "/readyz") == 200
    settled = run_deploy(*wider)
    assert settled.returncode == 0 and settled.totals["success"] == 0, settled.stderr[-3000:]
    assert restart not in operations_changed(settled)
    back = run_deploy()  # the inventory's unit again: restarted and checked once more
    assert back.returncode == 0 and restart in operations_changed(back), back.stderr[-3000:]


def test_pruning_keeps_five_releases_and_never_the_running_one(first_deploy, rehearsal):
    for n in range(2):  # the tests before left at least 4 releases
        deployed(f"test-prune-{n}")
    releases = ssh(rehearsal, f"ls {layout.RELEASES_DIR}").split()
    assert len(releases) == 5, releases
    assert current_release(rehearsal).rsplit("/", 1)[-1] in releases


def test_pruning_spares_the_release_that_serves_and_keeps_the_count(first_deploy, rehearsal):
    """Rolled back to the oldest kept release, then a new one deployed: the oldest is past the
    newest five, but it serves until the cutover, so that deploy keeps it, and one other goes
    (five in all). It went live after the others, so it is the way back from the new one and
    the next deploy keeps it too."""
    # Revisions of this run only (a release id keeps 10 characters of it): new directories.
    tag = uuid.uuid4().hex[:7]
    while len(releases := ssh(rehearsal, f"ls -1t {layout.RELEASES_DIR}").split()) < 5:
        deployed(f"f{len(releases)}-{tag}")
    oldest = releases[-1]
    run = rollback(PLINTH_ROLLBACK_TO=oldest)
    assert run.returncode == 0, run.stderr[-2000:]
    for revision in (f"a-{tag}", f"b-{tag}"):
        deployed(revision)
        kept = ssh(rehearsal, f"ls -1t {layout.RELEASES_DIR}").split()
        assert oldest in kept and len(kept) == 5, (revision, kept)


def test_failed_deploys_never_prune_the_releases_a_rollback_goes_to(first_deploy, rehearsal):
    """Room for three releases, and three failed deploys in a row before a good one: the
    failed releases are pruned before any that went live, so both releases live before the
    new one stay, and a rollback goes back two. (By age alone, two failed ones were kept and
    the release two back was pruned.)"""
    tag = uuid.uuid4().hex[:7]
    names = []
    for revision in (f"l-{tag}", f"r-{tag}"):
        deployed(revision, entry=RELEASE)
        names.append(current_release(rehearsal).rsplit("/", 1)[-1])
    room = "app_keep_releases=3"
    failing = (room, "release_health_timeout=3")
    for n in range(3):
        run = deploy_revision(f"x{n}-{tag}", RELEASE, failing, PLINTH_RELEASE_FAULT="readyz")
        assert run.returncode != 0 and "readyz: HTTP 503" in run.stderr, run.stderr[-2000:]
    run = deploy_revision(f"n-{tag}", RELEASE, (room,))
    assert run.returncode == 0, run.stderr[-2000:]
    names.append(current_release(rehearsal).rsplit("/", 1)[-1])
    kept = ssh(rehearsal, f"ls -1t {layout.RELEASES_DIR}").split()
    assert sorted(kept) == sorted(names), kept
    run = rollback(PLINTH_ROLLBACK_TO=names[0])
    assert run.returncode == 0, run.stderr[-2000:]
    assert current_release(rehearsal).endswith(f"/{names[0]}")


def test_releases_share_one_dependency_layer_and_unused_layers_go(first_deploy, rehearsal):
    stale = f"{layout.DEPS_DIR}/0123456789abcdef"  # as a lock no release uses any more leaves
    ssh(rehearsal, f"mkdir -p {stale}/venv && touch {stale}/{layout.INSTALLED_MARKER}")
    deployed("test-layer-a")
    first = current_release(rehearsal)
    deployed("test-layer-b")
    second = current_release(rehearsal)
    assert first != second
    layers = ssh(rehearsal, f"ls {layout.DEPS_DIR}").split()
    named = {ssh(rehearsal, f"cat {release}/deps") for release in (first, second)}
    assert len(named) == 1 and layers == list(named), (layers, named)  # shared; the stale one went
    # A release's venv holds the app alone and reaches its dependencies through the layer.
    site = f"{second}/venv/lib/python3*/site-packages"
    assert ssh(rehearsal, f"ls -d {site}/fastapi {site}/service 2>/dev/null").split() == [
        ssh(rehearsal, f"ls -d {site}/service")
    ]
    probe = f"{second}/venv/bin/python -c 'import fastapi; print(fastapi.__file__)'"
    assert ssh(rehearsal, probe).startswith(f"{layout.DEPS_DIR}/{named.pop()}/")


@contextmanager
def running_on_host(rehearsal, command: str, process: str, before: str = ""):
    """`command` started on the host in a session of its own (it outlives the SSH connection,
    as a step a lost deploy started does), after the shell line `before`; `process` (its
    exact command line: make it unique) stopped when the block ends."""
    ssh(rehearsal, f"{before}setsid {command} </dev/null >/dev/null 2>&1 & sleep 1")
    try:
        yield
    finally:
        ssh(rehearsal, f"pkill -fx {shlex.quote(process)} || true")


def deploy_breaking_the_lock():
    """The whole deploy with PLINTH_DEPLOY_LOCK=break."""
    os.environ["PLINTH_DEPLOY_LOCK"] = "break"
    try:
        return run_deploy()
    finally:
        del os.environ["PLINTH_DEPLOY_LOCK"]


def test_a_second_deploy_fails_naming_the_lock_holder_until_it_is_broken(first_deploy, rehearsal):
    holder = subprocess.Popen(
        ssh_argv(
            rehearsal, "/usr/local/sbin/plinth-release lock-acquire someone-else 5 wait; sleep 60"
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "ok"
    try:
        run = run_deploy()
        assert run.returncode != 0
        assert f"deploy lock {DEPLOY_LOCK} is held by someone-else" in run.stderr
        broken = deploy_breaking_the_lock()
        assert broken.returncode == 0, broken.stderr[-2000:]
        assert "broke the deploy lock held by someone-else" in broken.stderr  # said aloud
    finally:
        holder.kill()


def test_the_lock_outlives_a_lost_connection_until_its_steps_on_the_host_end(
    first_deploy, rehearsal
):
    """A deploy whose connection ends (Ctrl-C, the network) while a step it started on the
    host runs: sshd does not stop that step (a migration, a cutover's health check), so the
    lock stays until it ends. The step here holds the work lock as those do (`flock -s`;
    plinth-release takes it for a cutover, a settings reload and a first-start check)."""
    sleep = "sleep 8.5"  # the step's own process, found by its exact command line
    step = f"flock -s {WORK_LOCK} {sleep}"
    ssh(
        rehearsal,
        "/usr/local/sbin/plinth-release lock-acquire killed-deploy 5 wait >/dev/null || exit 1; "
        f"setsid {step} </dev/null >/dev/null 2>&1 & sleep 0.5",  # it holds its lock by then
    )  # the connection is gone now, the step runs on
    try:
        run = run_deploy()
        assert run.returncode != 0, run.stderr[-2000:]
        assert f"deploy lock {DEPLOY_LOCK} is held by killed-deploy" in run.stderr
    finally:
        deadline = time.monotonic() + 30
        while ssh(rehearsal, f"pgrep -fx {shlex.quote(sleep)} || true"):
            assert time.monotonic() < deadline, "the step did not end"
            time.sleep(0.5)
    time.sleep(1)  # the holder lets go once the step's lock is free
    after = run_deploy()
    assert after.returncode == 0, after.stderr[-2000:]


def test_an_install_holds_the_work_lock(first_deploy, rehearsal):
    """An install holds the work lock (shared) as a migration and a cutover do, so a deploy
    whose connection ends mid-install keeps its lock until the install (which sshd does not
    stop) has ended, and no other deploy installs into the same directory beside it. Here the
    work lock is taken exclusively for 6 s once the deploy holds its lock, before it installs:
    the install ends after that, not during it."""
    released = "/root/work-lock-released"
    ssh(rehearsal, f"rm -f {released}")
    before = current_release(rehearsal)
    runs = []
    deploy = threading.Thread(target=lambda: runs.append(deploy_revision("test-install-lock")))
    deploy.start()
    deadline = time.monotonic() + 30
    while "pyinfra pid" not in ssh(rehearsal, f"cat {DEPLOY_LOCK}.holder 2>/dev/null || true"):
        assert time.monotonic() < deadline, "the deploy never took its lock"
        time.sleep(0.1)
    ssh(
        rehearsal,
        f"setsid flock -x {WORK_LOCK} sh -c 'sleep 6; date +%s.%N > {released}' "
        "</dev/null >/dev/null 2>&1 & sleep 0.2",
    )
    deploy.join()
    assert runs[0].returncode == 0, runs[0].stderr[-3000:]
    release = current_release(rehearsal)
    assert release != before
    installed = float(ssh(rehearsal, f"stat -c %.9Y {release}/{layout.INSTALLED_MARKER}"))
    assert installed >= float(ssh(rehearsal, f"cat {released}"))


def test_breaking_the_lock_waits_for_the_steps_the_broken_deploy_left_running(
    first_deploy, rehearsal
):
    """A deploy whose connection ended while a step it started on the host runs on (sshd does
    not stop it): its lock broken on purpose, the holder lets go at once, but the new deploy
    waits for that step (the work lock) before it goes on, so no two deploys' migrations or
    cutovers ever run together."""
    sleep = "sleep 14.5"  # the step's own process
    acquired = f"{RELEASE_TOOL} lock-acquire killed-deploy 5 wait >/dev/null || exit 1; "
    with running_on_host(rehearsal, f"flock -s {WORK_LOCK} {sleep}", sleep, before=acquired):
        run = deploy_breaking_the_lock()
        assert run.returncode == 0, run.stderr[-2000:]
        assert "broke the deploy lock held by killed-deploy" in run.stderr
        # The deploy took the lock only once the step had ended: it is gone by now.
        assert ssh(rehearsal, f"pgrep -fx {shlex.quote(sleep)} || true") == ""


def test_a_host_without_python_is_refused_in_one_line_before_any_change(first_deploy, rehearsal):
    """The deploy lock (taken before base installs anything) runs python3 on the host: a
    minimal Debian without it gets told so, not `python3: not found` under a lock message."""
    python = "/usr/bin/python3"
    hidden = f"{python}.hidden-by-test"
    stamps = f"ls -l --time-style=+%s {layout.ENV_FILE} {layout.CURRENT_LINK}"
    before = ssh(rehearsal, stamps)
    ssh(rehearsal, f"mv {python} {hidden}")
    try:
        run = run_deploy()
    finally:
        ssh(rehearsal, f"mv {hidden} {python}")
    assert run.returncode != 0
    assert NO_PYTHON in run.stderr, run.stderr[-2000:]
    assert "not found" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert (
        ssh(rehearsal, f"ls -l --time-style=+%s {layout.ENV_FILE} {layout.CURRENT_LINK}") == before
    )
    assert run_deploy().returncode == 0


def test_a_local_user_can_neither_take_nor_block_the_deploy_lock(first_deploy, rehearsal):
    """As after a boot (/run emptied), a local user (nobody) makes and holds the lock file
    before the next deploy can: the lock lives in root's own directory, so it cannot, and the
    deploy goes on. (In the world-writable /run/lock it could, and every deploy failed.)"""
    squatter = "sleep 61.5"
    ssh(rehearsal, f"rm -f {DEPLOY_LOCK} {DEPLOY_LOCK}.holder")
    as_nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups"
    with running_on_host(rehearsal, f"{as_nobody} flock -n {DEPLOY_LOCK} {squatter}", squatter):
        run = run_deploy()
        assert run.returncode == 0, run.stderr[-2000:]
        lock_dir = DEPLOY_LOCK.rsplit("/", 1)[0]
        assert ssh(rehearsal, f"stat -c '%U %a' {lock_dir}") == "root 700"


def test_breaking_a_free_lock_signals_no_one(first_deploy, rehearsal):
    """A holder note left by a lock daemon killed with KILL names a PID that is someone else's
    by now: with the lock free, PLINTH_DEPLOY_LOCK=break must not signal it."""
    info = f"{DEPLOY_LOCK}.holder"
    unit = "plinth-test-bystander"
    ssh(rehearsal, f"systemd-run --unit={unit} -p RuntimeMaxSec=120 sleep 120")
    try:
        pid = ssh(rehearsal, f"systemctl show -p MainPID --value {unit}")
        note = json.dumps({"who": "gone@away", "since": "then", "holder_pid": int(pid)})
        ssh(rehearsal, f"printf '%s' {shlex.quote(note)} > {info}")
        run = deploy_breaking_the_lock()
        assert run.returncode == 0, run.stderr[-2000:]
        assert "broke the deploy lock" not in run.stderr
        assert ssh(rehearsal, f"systemctl is-active {unit}") == "active"
        assert ssh(rehearsal, f"systemctl show -p MainPID --value {unit}") == pid
    finally:
        ssh(rehearsal, f"systemctl stop {unit}")


def test_a_deploy_told_to_wait_for_the_lock_goes_on_once_it_is_free(first_deploy, rehearsal):
    """release_lock_wait: the second deploy waits while the lock is held (it is still running
    after several seconds), then takes the lock when its holder ends, and succeeds."""
    release = "/run/plinth-test-lock-release"
    holder = subprocess.Popen(
        ssh_argv(
            rehearsal,
            f"rm -f {release}; /usr/local/sbin/plinth-release lock-acquire someone-else 5 wait"
            f" && while [ ! -e {release} ]; do sleep 0.2; done",
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "ok"
    env = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path())}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "pyinfra", "-y", "--data", "release_lock_wait=120",
         "infra/inventories/rehearsal.py", SITE],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(10)
        assert waiting.poll() is None, waiting.communicate()[1][-2000:]  # still waiting
        ssh(rehearsal, f"touch {release}")
        holder.wait(timeout=30)
        _, stderr = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, stderr[-2000:]
    finally:
        for process in (holder, waiting):
            process.kill()
        ssh(rehearsal, f"rm -f {release}")


def test_an_unchanged_deploy_is_a_no_op(first_deploy):
    deployed("test-idem")
    run = deploy_revision("test-idem")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.totals["success"] == 0
