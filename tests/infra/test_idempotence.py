"""A second deploy changes nothing; a managed file changed on the host by hand (content, mode
or owner) is put back by the next deploy, which touches only what drifted."""

from __future__ import annotations

import sys
import time

import pytest

from infra.deploys import layout
from infra.deploys.firewall import NFTABLES_CONF
from infra.deploys.logcaps import HOURLY_DROPIN
from infra.deploys.nginx import FILES_CHECKSUM
from infra.deploys.sandbox import NGINX_DROPIN, POSTGRESQL_DROPIN

pytestmark = pytest.mark.infra


def test_second_deploy_changes_nothing(first_deploy, deploy):
    again = deploy()
    assert again.returncode == 0, again.stderr[-3000:]
    print(f"\nno-op re-deploy: {again.seconds:.1f} s", file=sys.stderr)
    changed = [line for line in again.stderr.splitlines() if "Success" in line]
    assert again.totals["success"] == 0, changed


def _state(host, path: str) -> tuple[str, str, str, int]:
    file = host.file(path)
    return file.sha256sum, file.user, file.group, file.mode


def test_a_managed_file_changed_by_hand_is_put_back(host, deploy):
    drifts = {
        layout.NGINX_SITE: f"echo '# edited by hand' >> {layout.NGINX_SITE}",
        layout.JOURNALD_DROPIN: f"chmod 600 {layout.JOURNALD_DROPIN}",
        NFTABLES_CONF: f"chown nobody {NFTABLES_CONF}",
        layout.NGINX_TLS_SITE: f"chgrp nogroup {layout.NGINX_TLS_SITE}",
    }
    wanted = {path: _state(host, path) for path in drifts}
    for command in drifts.values():
        host.check_output(command)
    assert all(_state(host, path) != state for path, state in wanted.items())

    fixed = deploy()
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert {path: _state(host, path) for path in drifts} == wanted
    # Each drifted file, and what depends on it (nginx -t and reload, journald's restart...),
    # but no more than that (13: nginx, e.g., has its file, check, reload and record, twice).
    assert 4 <= fixed.totals["success"] <= 14, fixed.stderr[-3000:]
    again = deploy()
    assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-3000:]


def test_a_dry_run_changes_nothing_on_the_host(host, deploy):
    """`--dry` (README: changes no file and no service): a drifted file stays drifted, nginx
    and the service keep their processes; the real deploy after it puts the file back."""
    edit = "# edited by hand, dry-run test"
    host.check_output(f"echo '{edit}' >> {layout.NGINX_SITE}")
    pids = {
        unit: host.check_output(f"systemctl show -p MainPID --value {unit}")
        for unit in ("nginx", layout.SERVICE_UNIT, "postgresql@*-main")
    }
    dry = deploy(dry=True)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert edit in host.file(layout.NGINX_SITE).content_string
    assert {u: host.check_output(f"systemctl show -p MainPID --value {u}") for u in pids} == pids
    fixed = deploy()
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert edit not in host.file(layout.NGINX_SITE).content_string


def test_a_unit_written_but_never_loaded_is_loaded_by_the_next_deploy(host, deploy):
    """A run that wrote the service's unit and stopped before the daemon-reload: the file is
    up to date from then on, and only systemd knows it still runs the old definition. The
    next deploy asks systemd (NeedDaemonReload), reloads it and restarts the service."""
    unit = f"{layout.SYSTEMD_UNIT_DIR}/{layout.SERVICE_UNIT}"
    timeout = f"systemctl show -p TimeoutStopUSec --value {layout.SERVICE_UNIT}"
    stale = f"systemctl show -p NeedDaemonReload --value {layout.SERVICE_UNIT}"
    assert "\nTimeoutStopSec=40\n" in host.file(unit).content_string
    host.check_output(f"sed -i 's/^TimeoutStopSec=40$/TimeoutStopSec=41/' {unit}")
    host.check_output(f"systemctl daemon-reload && systemctl restart {layout.SERVICE_UNIT}")
    assert host.check_output(timeout) == "41s"
    # The interrupted run: the unit as the deploy renders it, and no daemon-reload.
    host.check_output(f"sed -i 's/^TimeoutStopSec=41$/TimeoutStopSec=40/' {unit}")
    assert host.check_output(stale) == "yes"
    run = deploy()
    assert run.returncode == 0, run.stderr[-3000:]
    assert host.check_output(stale) == "no"
    assert host.check_output(timeout) == "40s"
    again = deploy()
    assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-3000:]


# One header of port 80's answer, as nginx serves it now.
_PORT_80_HEADER = (
    "python3 -c \"import http.client as h; c = h.HTTPConnection('127.0.0.1', 80, timeout=5); "
    "c.request('GET', '/healthz'); print(c.getresponse().getheader('X-Pending-Test', ''))\""
)


def test_nginx_files_written_but_never_reloaded_are_reloaded_by_the_next_deploy(host, deploy):
    """A run that wrote nginx's files (nginx -t passed) and stopped before the reload: they
    are up to date from then on, so only a record of what nginx last loaded (APPLIED_DIR/nginx)
    tells the next deploy to reload. Here the last run's files had a header the deploy's
    files now lack, and nginx serves it still."""
    site, kept = layout.NGINX_SITE, "/root/plinth-site.deployed"
    host.check_output(f"cp -a {site} {kept}")
    try:
        host.check_output(
            f"sed -i 's/^    server_name .*/&\\n    add_header X-Pending-Test on always;/' {site}"
            " && nginx -t -q && systemctl reload nginx"
        )
        # ... as a run whose templates had the header would have loaded and recorded them.
        host.check_output(f"({FILES_CHECKSUM}) > {layout.APPLIED_DIR}/nginx")
        _until_header(host, "on")
        # The interrupted run: the deploy's file back on disk, and no reload.
        host.check_output(f"cp -a {kept} {site}")
        assert host.check_output(_PORT_80_HEADER) == "on"
        run = deploy()
        assert run.returncode == 0, run.stderr[-3000:]
        _until_header(host, "")
        again = deploy()
        assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-3000:]
    finally:
        host.run(f"cp -a {kept} {site} && rm -f {kept} && systemctl reload nginx")


def _until_header(host, wanted: str) -> None:
    """nginx's reload returns before its new workers answer: wait (up to 5 s) for them."""
    for _ in range(50):
        if host.check_output(_PORT_80_HEADER) == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"port 80's X-Pending-Test is not {wanted!r}")


def test_postgresql_settings_written_but_never_applied_are_applied_by_the_next_deploy(host, deploy):
    """The same for PostgreSQL's settings, which take a restart (APPLIED_DIR has a record per
    file a restart or reload puts into effect: journald's, the sandboxes', pg_hba's too). Here
    the last run's file had max_connections 123, and PostgreSQL runs with it still."""
    conf = host.check_output("ls /etc/postgresql/*/main/conf.d/plinth.conf")
    show = "runuser -u postgres -- psql -tAc 'show max_connections'"
    wanted, kept = host.check_output(show), "/root/plinth-pg.deployed"
    record = f"{layout.APPLIED_DIR}/postgresql-settings"
    host.check_output(f"cp -a {conf} {kept}")
    try:
        host.check_output(
            f"sed -i 's/^max_connections = .*/max_connections = 123/' {conf}"
            f" && systemctl restart postgresql && sha1sum {conf} | cut -d ' ' -f 1 > {record}"
        )
        assert host.check_output(show) == "123"
        host.check_output(f"cp -a {kept} {conf}")  # the interrupted run: no restart
        run = deploy()
        assert run.returncode == 0, run.stderr[-3000:]
        assert host.check_output(show) == wanted
        again = deploy()
        assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-3000:]
    finally:
        host.run(f"cp -a {kept} {conf} && rm -f {kept}")


def _recorded(host, key: str, path: str) -> bool:
    record = host.check_output(f"cat {layout.APPLIED_DIR}/{key}")
    return record == host.check_output(f"sha1sum {path} | cut -d ' ' -f 1")


@pytest.mark.parametrize("left", ["other", "none"])
def test_every_record_that_differs_from_its_file_makes_the_next_deploy_apply_it(host, deploy, left):
    """The records the two tests above leave out, each as a stopped run leaves it: the record
    holds what was in effect before (here a checksum of something else), or there is none (a
    first deploy stopped before it recorded anything), and the file on disk is the deploy's.
    The next deploy puts each file into effect (a restart or a reload of the unit that reads
    it), records it, and changes nothing the time after. PostgreSQL's sandbox takes a round of
    its own: its restart would hide pg_hba's reload."""
    hba = host.check_output("ls /etc/postgresql/*/main/pg_hba.conf")
    invocation = "systemctl show -p InvocationID --value "
    pg = "runuser -u postgres -- psql -tAc "
    earlier = "echo 'in effect before' | sha1sum | cut -d ' ' -f 1"  # a record of other content
    # key -> (the file it records, how the host shows that the file was put into effect)
    rounds = [
        {
            "journald": (layout.JOURNALD_DROPIN, invocation + "systemd-journald"),
            "logrotate-timer": (HOURLY_DROPIN, invocation + "logrotate.timer"),
            "sandbox-nginx": (NGINX_DROPIN, invocation + "nginx"),
            "postgresql-hba": (hba, pg + "'select pg_conf_load_time()'"),
        },
        {"sandbox-postgresql": (POSTGRESQL_DROPIN, pg + "'select pg_postmaster_start_time()'")},
    ]
    for records in rounds:
        before = {key: host.check_output(show) for key, (_, show) in records.items()}
        started = host.check_output(pg + "'select pg_postmaster_start_time()'")
        for key in records:
            record = f"{layout.APPLIED_DIR}/{key}"
            host.check_output(f"{earlier} > {record}" if left == "other" else f"rm {record}")
        run = deploy()
        assert run.returncode == 0, run.stderr[-3000:]
        after = {key: host.check_output(show) for key, (_, show) in records.items()}
        assert [key for key in records if after[key] == before[key]] == [], run.stderr[-3000:]
        stale = [key for key, (path, _) in records.items() if not _recorded(host, key, path)]
        assert stale == []
        if "postgresql-hba" in records:  # a reload: the same server, its files read again
            assert host.check_output(pg + "'select pg_postmaster_start_time()'") == started
        again = deploy()
        assert again.returncode == 0 and again.totals["success"] == 0, again.stderr[-3000:]
