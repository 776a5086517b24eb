"""Bad inventory data stops the deploy before anything changes on a host, with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from infra.deploys import layout

pytestmark = pytest.mark.infra


def _error_lines(run) -> list[str]:
    return [line for line in run.stderr.splitlines() if "inventory data for" in line]


def _assert_refused(run, message: str) -> None:
    assert run.returncode != 0
    lines = _error_lines(run)
    assert len(lines) == 1, run.stderr[-2000:]
    assert message in lines[0]
    assert "Traceback" not in run.stderr
    assert "Starting operation" not in run.stderr  # nothing ran on the host


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param("domain=", "domain is not set", id="missing-domain"),
        pytest.param("domain=example.com", "is a placeholder", id="placeholder-domain"),
        pytest.param("domain=changeme.plinth.test", "is a placeholder", id="changeme-domain"),
        pytest.param("domain=not a name", "is not a valid DNS name", id="malformed-domain"),
        pytest.param("tls_acme_email=ops-at-plinth", "is not a valid e-mail", id="bad-email"),
        pytest.param("app_workers=0", "app_workers 0 is out of range", id="no-workers"),
        pytest.param("app_workers=500", "out of range", id="too-many-workers"),
        pytest.param("db_owner=plinth", "must not own its tables", id="service-owns-db"),
        pytest.param("db_owner=Plinth-Owner", "not a plain PostgreSQL role", id="bad-role"),
    ],
)
def test_bad_data_is_refused_before_any_change(first_deploy, host, deploy, data, message):
    before = host.check_output(f"stat -c %Y {layout.ENV_FILE} {layout.NGINX_SITE}")
    run = deploy("--data", data)
    _assert_refused(run, message)
    assert host.check_output(f"stat -c %Y {layout.ENV_FILE} {layout.NGINX_SITE}") == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_unknown_distribution_is_refused(tmp_path, deploy):
    """The control machine as the host (@local, --dry: nothing can run) under a fake
    os-release, bind-mounted in a private mount namespace."""
    (tmp_path / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
    inventory = tmp_path / "inventory.py"
    inventory.write_text('app = [("@local", {"domain": "plinth.test"})]\n')
    script = (
        f"mount --bind {tmp_path / 'os-release'} /etc/os-release && "
        f"{sys.executable} -m pyinfra -y --dry {inventory} infra/deploys/site.py"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=os.fspath(__import__("pathlib").Path(__file__).resolve().parents[2]),
        capture_output=True,
        text=True,
    )
    _assert_refused(result, "is not supported (only Debian 12 (bookworm), Debian 13 (trixie))")
