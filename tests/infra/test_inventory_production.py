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
