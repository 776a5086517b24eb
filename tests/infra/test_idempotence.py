"""A second deploy changes nothing."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.infra


def test_second_deploy_changes_nothing(first_deploy, deploy):
    again = deploy()
    assert again.returncode == 0, again.stderr[-3000:]
    print(f"\nno-op re-deploy: {again.seconds:.1f} s", file=sys.stderr)
    changed = [line for line in again.stderr.splitlines() if "Success" in line]
    assert again.totals["success"] == 0, changed
