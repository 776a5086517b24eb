"""Fixtures for the deploy tests: the rehearsal host (booted by the rehearsal tool unless
PLINTH_REHEARSAL_HOST_JSON names one already running), one deploy per session, and testinfra."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

REPO = Path(__file__).resolve().parents[2]
# The load generator the benchmarks ship to a host (`ssh host python3 - ARGS < it`).
LOADGEN = REPO / "bench" / "loadgen.py"
if str(REPO) not in sys.path:  # the tests read host names from infra.deploys.layout
    sys.path.insert(0, str(REPO))
# The same host checks run against the Vagrant machine: tests/infra/test_vagrant.py sets
# PLINTH_INFRA_INVENTORY=infra/inventories/vagrant.py and a host.json describing it.
INVENTORY = os.environ.get("PLINTH_INFRA_INVENTORY") or "infra/inventories/rehearsal.py"
SITE = "infra/deploys/site.py"


def login_user(rehearsal: dict) -> str:
    """Who logs in once a deploy ran: the deploy user where a fresh host let only root in (the
    deploy turned root login off), else the host's own login user (Vagrant's)."""
    from infra.deploys import layout

    user = rehearsal.get("ssh_user", "root")
    return layout.DEPLOY_USER if user == "root" else user


def ssh_argv(rehearsal: dict, command: str) -> list[str]:
    """`ssh` to the deployed host running `command` (a shell line) as root, through sudo."""
    user = login_user(rehearsal)
    options = ["IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=no"]
    options += ["UserKnownHostsFile=/dev/null", "LogLevel=ERROR", "ConnectTimeout=10"]
    argv = ["ssh", "-i", str(rehearsal["ssh_key"]), *(f"-o{option}" for option in options)]
    return [*argv, f"{user}@{rehearsal['address']}", f"sudo -n sh -c {shlex.quote(command)}"]


def host_json_path() -> Path:
    state_dir = Path(os.environ.get("PLINTH_REHEARSAL_DIR") or REPO / ".rehearsal")
    return Path(os.environ.get("PLINTH_REHEARSAL_HOST_JSON") or state_dir / "host.json")


@dataclass
class DeployRun:
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def totals(self) -> dict:
        return json.loads(self.stdout)["results"]["totals"]


def run_deploy(
    *extra: str, dry: bool = False, inventory: str = INVENTORY, entry: str = SITE
) -> DeployRun:
    """`pyinfra -y --json INVENTORY site.py` (or another `entry` deploy) from the repository
    root, as the Makefile runs it."""
    env = {**os.environ, "PLINTH_REHEARSAL_HOST_JSON": str(host_json_path())}
    args = [sys.executable, "-m", "pyinfra", "-y", "--json", *extra, inventory, entry]
    if dry:
        args.insert(3, "--dry")
    started = time.monotonic()
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    return DeployRun(result.returncode, time.monotonic() - started, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def rehearsal():
    """The rehearsal host's host.json; `python -m infra.rehearsal up` when there is none, and
    then `down` at the end of the session, so a suite leaves the machine as it found it."""
    path = host_json_path()
    booted_here = not path.is_file()
    if booted_here:
        subprocess.run([sys.executable, "-m", "infra.rehearsal", "up"], cwd=REPO, check=True)
    if not path.is_file():
        pytest.fail(f"no rehearsal host: {path} missing after `python -m infra.rehearsal up`")
    yield json.loads(path.read_text())
    if booted_here and not os.environ.get("PLINTH_KEEP_REHEARSAL"):
        subprocess.run([sys.executable, "-m", "infra.rehearsal", "down"], cwd=REPO, check=True)


@pytest.fixture(scope="session")
def first_deploy(rehearsal) -> DeployRun:
    """The deploy every host test looks at (converges a fresh host or updates a running one)."""
    run = run_deploy()
    assert run.returncode == 0, run.stderr[-3000:]
    print(f"\ndeploy: {run.seconds:.1f} s, totals {run.totals}", file=sys.stderr)
    return run


@pytest.fixture(scope="session")
def deploy():
    """`deploy(*pyinfra_args, dry=False, inventory=...)`: one more pyinfra run."""
    return run_deploy


@pytest.fixture(scope="session")
def ssh_config(rehearsal, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "config"
    path.write_text(
        "Host rehearsal\n"
        f"  HostName {rehearsal['address']}\n"
        f"  User {login_user(rehearsal)}\n"
        f"  IdentityFile {rehearsal['ssh_key']}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    return path


@pytest.fixture(scope="session")
def host(first_deploy, ssh_config, rehearsal):
    """testinfra over SSH to the deployed rehearsal host as its login user (root login is off),
    commands run as root through sudo."""
    return testinfra.get_host("ssh://rehearsal", ssh_config=str(ssh_config), sudo=True)


@pytest.fixture(scope="session")
def base_url(rehearsal) -> str:
    return f"http://{rehearsal['address']}"
