"""A second deploy changes nothing; a managed file changed on the host by hand (content, mode
or owner) is put back by the next deploy, which touches only what drifted."""

from __future__ import annotations

import sys

import pytest

from infra.deploys import layout
from infra.deploys.firewall import NFTABLES_CONF

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
    # but no more than that.
    assert 4 <= fixed.totals["success"] <= 12, fixed.stderr[-3000:]
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
