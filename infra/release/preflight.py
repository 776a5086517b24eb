"""Fail fast before touching a host: the artifact installs into a clean virtualenv on the
control machine, the service imports, and the app answers `/healthz` in process (raw ASGI,
no server, no database). A passing artifact is remembered by its checksum."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from infra.release.build import CACHE_DIR, LAYER_PTH, UV, Release, Target

PROBE = r"""
import asyncio, json, os
os.environ.update(PLINTH_ENVIRONMENT="testing",
                  PLINTH_DATABASE_URL="postgresql+psycopg://preflight@127.0.0.1:9/preflight")
from service.asgi import app

async def healthz():
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/healthz", "raw_path": b"/healthz",
             "query_string": b"", "root_path": "", "headers": [(b"host", b"preflight")],
             "client": ("127.0.0.1", 1), "server": ("preflight", 80)}
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    return sent[0]["status"]

status = asyncio.run(healthz())
print(status)
raise SystemExit(0 if status == 200 else 1)
"""


class PreflightError(Exception):
    """The artifact does not install, import or answer; the message is one line."""


def _run(args: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines() or ["failed"]
        raise PreflightError(f"{what}: {lines[-1]}")


def preflight(release: Release, target: Target) -> None:
    """Raises PreflightError; skipped (with a note) when this interpreter is not the target's."""
    ok_marker = CACHE_DIR / f"{release.artifact.name}.{release.sha256[:16]}.{release.deps_key}.ok"
    if ok_marker.exists():
        return
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != target.python:
        print(f"preflight skipped: control Python {here}, host {target.python}", file=sys.stderr)
        return
    site = f"lib/python{target.python}/site-packages"
    deps = _layer_venv(release)
    with tempfile.TemporaryDirectory(prefix="plinth-preflight-") as tmp:
        root = Path(tmp)
        with tarfile.open(release.artifact) as tar:
            tar.extractall(root / "release", filter="data")
        # As on the host: a clean venv holding only the app, which finds its dependency layer
        # through a .pth file.
        venv = root / "venv"
        _run([UV, "venv", "--quiet", "--python", sys.executable, str(venv)], "virtualenv")
        (venv / site / LAYER_PTH).write_text(f"{deps / site}\n")
        wheel = next((root / "release").glob("plinth-*.whl"))
        _run(
            [
                UV, "pip", "install", "--quiet", "--offline", "--no-index", "--no-deps",
                "--python", str(venv / "bin" / "python"), str(wheel),
            ],
            "install the release into a clean virtualenv",
        )  # fmt: skip
        _run([str(venv / "bin" / "python"), "-c", PROBE], "import and GET /healthz", cwd=tmp)
    ok_marker.touch()


def _layer_venv(release: Release) -> Path:
    """The layer's venv on the control machine, installed from its artifact once per key (as
    the host does), so an app-only release's preflight installs the app alone."""
    layer = CACHE_DIR / "preflight-layers" / release.deps_key
    if (layer / ".installed").exists():
        return layer
    shutil.rmtree(layer, ignore_errors=True)
    layer.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="plinth-preflight-layer-") as tmp:
        with tarfile.open(release.deps_artifact) as tar:
            tar.extractall(tmp, filter="data")
        _run([UV, "venv", "--quiet", "--python", sys.executable, str(layer)], "virtualenv")
        _run(
            [
                # Compiled once here: the probe then imports in a fraction of the time.
                UV, "pip", "install", "--quiet", "--offline", "--no-index", "--compile-bytecode",
                "--python", str(layer / "bin" / "python"),
                "--find-links", str(Path(tmp) / "wheels"),
                "-r", str(Path(tmp) / "requirements.txt"),
            ],
            "install the dependency layer into a clean virtualenv",
        )  # fmt: skip
    (layer / ".installed").touch()
    return layer
