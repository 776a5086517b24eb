"""A change nginx refuses never stays on disk: the deploy fails with nginx's reason in one line,
plinth's nginx files are put back as nginx last accepted them (the refused ones kept aside),
nginx goes on serving and still starts, and the next good deploy has nothing to repair."""

from __future__ import annotations

import shutil

import pytest

from infra.deploys import layout
from infra.deploys.templating import TEMPLATES_DIR
from tests.infra.https_client import request

pytestmark = pytest.mark.infra

# The nginx deploy as site.py runs it, but rendering from a copy of the templates in which a
# developer made a typo: the way a file nginx refuses reaches a host (inventory data that would
# break a file is refused before anything runs, see test_inventory_validation.py).
BROKEN_TEMPLATES_ENTRY = """
from pathlib import Path

from infra.deploys import templating

templating.TEMPLATES_DIR = Path({templates!r})

from infra.deploys.nginx import nginx

nginx()
"""
TYPO = "proxy_bufering off;"


def _own_files(host) -> dict[str, tuple[str, str, str, int] | str | None]:
    """Each of plinth's nginx files: a link's target, a file's checksum, owner and mode."""
    state = {}
    for path in layout.NGINX_OWN_FILES:
        file = host.file(path)
        if file.is_symlink:
            state[path] = file.linked_to
        elif file.exists:
            state[path] = (file.sha256sum, file.user, file.group, file.mode)
        else:
            state[path] = None
    return state


def test_a_change_nginx_refuses_is_put_back(first_deploy, host, deploy, rehearsal, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    snippet = templates / "nginx" / "plinth-app.conf.j2"
    snippet.write_text(snippet.read_text() + f"\n{TYPO}\n")
    entry = tmp_path / "broken_nginx.py"
    entry.write_text(BROKEN_TEMPLATES_ENTRY.format(templates=str(templates)))
    before = _own_files(host)
    assert before[layout.NGINX_APP_LOCATIONS] is not None

    refused = deploy(entry=str(entry))

    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if "nginx -t refused" in line]
    assert len(lines) == 1, refused.stderr[-3000:]
    assert 'unknown directive "proxy_bufering"' in lines[0]
    assert "back as nginx last accepted them" in lines[0]
    assert "Traceback" not in refused.stderr
    # On disk: what nginx accepted, to the byte, owner and mode; the refused file kept aside.
    assert _own_files(host) == before
    assert TYPO not in host.file(layout.NGINX_APP_LOCATIONS).content_string
    rejected = host.file(f"{layout.NGINX_REJECTED_DIR}{layout.NGINX_APP_LOCATIONS}")
    assert TYPO in rejected.content_string
    # nginx serves on, and a restart (as at the next boot) loads the configuration again.
    assert host.run("nginx -t -q").rc == 0
    assert request(rehearsal, "GET", "/healthz")[0] == 200
    host.check_output("systemctl restart nginx")
    assert host.service("nginx").is_running
    assert request(rehearsal, "GET", "/healthz")[0] == 200

    # The real templates again: the files are already what they render to.
    again = deploy()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.totals["success"] == 0, again.stderr[-3000:]
