"""The production inventory takes its host, domain and contact from the environment and says
in one line which are missing (no host needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_production_inventory_names_the_missing_variables():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLINTH_")}
    env["PLINTH_DOMAIN"] = "api.plinth.test"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyinfra",
            "-y",
            "--dry",
            "infra/inventories/production.py",
            "infra/deploys/site.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "pyinfra error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(
        "production inventory needs PLINTH_HOST, PLINTH_ACME_EMAIL in the environment"
    )
    assert "Traceback" not in result.stderr


def _make_command(target: str) -> str:
    """The one command `make TARGET` would run (make -n prints it, runs nothing)."""
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    (command,) = dry.stdout.splitlines()
    return command


def test_production_has_the_rehearsal_s_deploy_release_and_rollback():
    """What an operator rehearses is what production gets: the same deploy file, through the
    production inventory (a missing `rollback-production` left a production rollback to a
    hand-typed pyinfra command line)."""
    for rehearsal, production in (
        ("deploy-rehearsal", "deploy-production"),
        ("release-rehearsal", "release-production"),
        ("rollback", "rollback-production"),
    ):
        rehearsed, shipped = _make_command(rehearsal), _make_command(production)
        assert "infra/inventories/rehearsal.py" in rehearsed
        assert shipped == rehearsed.replace(
            "infra/inventories/rehearsal.py", "infra/inventories/production.py"
        )


def test_production_deploy_user_is_named_by_the_environment():
    """PLINTH_DEPLOY_USER names the deploy user (group data cannot: the inventory picks the
    login before data is read). debug-inventory connects to nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLINTH_")}
    env.update(
        PLINTH_HOST="192.0.2.1",  # TEST-NET-1: never reached, nothing connects
        PLINTH_DOMAIN="api.plinth.test",
        PLINTH_ACME_EMAIL="ops@plinth.test",
        PLINTH_SSH_USER="admin",
    )
    args = [sys.executable, "-m", "pyinfra", "infra/inventories/production.py", "debug-inventory"]
    seen = {}
    for deploy_user in (None, "ops"):
        extra = {"PLINTH_DEPLOY_USER": deploy_user} if deploy_user else {}
        result = subprocess.run(
            args, cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        (line,) = [x for x in result.stderr.splitlines() if '"deploy_user"' in x]  # pyinfra logs
        seen[deploy_user] = line.split(":", 1)[1].strip().strip('",')
    assert seen == {None: "deploy", "ops": "ops"}
