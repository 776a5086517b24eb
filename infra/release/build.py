"""Build (or reuse from `.cache/releases/`) the two artifacts a release installs from.

- The **dependency layer** `deps-<key>.tar`: `wheels/` (the locked dependencies, binary wheels
  for the host's Python and platform) and `requirements.txt`. Its key is the lock's export plus
  the target, so every release of the same lock shares one layer: the host installs it once
  (as Capistrano shares `shared/bundle` between releases) and a release only adds its own wheel.
- The **release** `plinth-<id>.tar`: `plinth-*.whl`, `release.json` and `deps` (the layer's
  key). Keyed by the content of everything that goes into it, so building again with the same
  inputs gives the very same file (same checksum on the host: upload and install are no-ops)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.migrations import head_revision  # the release's migrations are this tree's

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache" / "releases"
# The uv that runs this deploy (`uv run` exports its own path as UV): a machine that has uv only
# in the project's .cache/tools, not on PATH, builds with it too.
UV = os.environ.get("UV", "uv")
# What the service's wheel and its dependencies are made of.
SOURCE_PATHS = ("pyproject.toml", "uv.lock", "README.md", "service")
# In a release's site-packages: the path of its dependency layer's site-packages.
LAYER_PTH = "plinth-deps.pth"
# Part of every key: a change of the artifacts' layout never reuses an older build.
ARTIFACT_FORMAT = "2"
# Label a build with this revision instead of git's (a new version from the same tree: tests).
REVISION_ENV = "PLINTH_RELEASE_REVISION"
# Test only: a release with a fault, built from a patched copy of the tree. "readyz": its
# /readyz always answers 503 (a broken release). "expand": one more migration, which adds a
# nullable column, as a newer release's expand step would (rollbacks across it are tested).
# "migrate": one more migration (as "expand"), which fails on the host, as one that names a
# table the database lacks would.
# "import": the service does not import, which the preflight must stop before the host.
# "startup": the app's startup fails, on the host only (under systemd), as a release whose
# plug-in needs what only the sandbox refuses would: the preflight passes it.
FAULT_ENV = "PLINTH_RELEASE_FAULT"
EXPAND_REVISION = "9001_rehearsal_expand"
_READYZ_FAULT = """

_create_serving_app = create_app


def create_app(settings):  # PLINTH_RELEASE_FAULT=readyz: deliberately broken
    serving = _create_serving_app(settings)

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/readyz":
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": b"broken on purpose"})
            return
        await serving(scope, receive, send)

    return app
"""
# A fault's own Alembic migration, one after the tree's head (@REVISION@, @HEAD@: see _build).
_FAULT_MIGRATION = '''"""PLINTH_RELEASE_FAULT={fault} (test only): {what}."""

import sqlalchemy as sa
from alembic import op

revision = "@REVISION@"
down_revision = "@HEAD@"
branch_labels = None
depends_on = None


def upgrade() -> None:
    {upgrade}


def downgrade() -> None:
    {downgrade}
'''
_EXPAND_FAULT = _FAULT_MIGRATION.format(
    fault="expand",
    what="a newer release's expand step",
    upgrade='op.add_column("predictions", sa.Column("rehearsal_expand", sa.Text(), nullable=True))',
    downgrade='op.drop_column("predictions", "rehearsal_expand")',
)
_MIGRATE_FAULT = _FAULT_MIGRATION.format(
    fault="migrate",
    what="a migration that fails",
    upgrade='op.execute("ALTER TABLE rehearsal_no_such_table ADD COLUMN fault integer")',
    downgrade="pass",
)
_IMPORT_FAULT = """

raise ImportError("PLINTH_RELEASE_FAULT=import: this release does not import")
"""
_STARTUP_FAULT = """

import os as _os

_serving_lifespan = _lifespan


@asynccontextmanager
async def _lifespan(app):  # PLINTH_RELEASE_FAULT=startup: create_app looks it up when called
    if _os.environ.get("INVOCATION_ID"):  # set by systemd for a unit's processes only
        raise RuntimeError("PLINTH_RELEASE_FAULT=startup: this release fails its startup")
    async with _serving_lifespan(app):
        yield
"""
_NEW_MIGRATION = f"service/migrations/versions/{EXPAND_REVISION}.py"  # a fault's own migration
# name -> {path in the tree: text appended to it (a new file is made)}
FAULTS = {
    # Wraps create_app, which every server process calls (plinth serve's workers too).
    "readyz": {"service/app.py": _READYZ_FAULT},
    "expand": {_NEW_MIGRATION: _EXPAND_FAULT},
    "migrate": {_NEW_MIGRATION: _MIGRATE_FAULT},
    "import": {"service/app.py": _IMPORT_FAULT},
    "startup": {"service/app.py": _STARTUP_FAULT},
}


class ReleaseBuildError(Exception):
    """The artifact could not be built; the message is one line."""


@dataclass(frozen=True)
class Target:
    """Where the release runs: picks the binary wheels."""

    python: str  # "3.11"
    glibc: str  # "2.36"
    machine: str = "x86_64"

    @property
    def platform_tags(self) -> list[str]:
        """Every manylinux tag this glibc runs (pip does not expand them for --platform)."""
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 4, -1)]
        return [
            *tags,
            f"manylinux2014_{self.machine}",
            f"manylinux2010_{self.machine}",
            f"manylinux1_{self.machine}",
            "any",
        ]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


@dataclass(frozen=True)
class Release:
    release_id: str
    version: str
    git_revision: str
    artifact: Path  # the release's tar on the control machine
    sha256: str
    deps_key: str
    deps_artifact: Path  # the dependency layer's tar on the control machine
    migration_head: str | None  # the Alembic revision the release's migrations end at


def _run(args: list[str], cwd: Path = REPO) -> str:
    try:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as error:  # no uv: one line, not a traceback
        raise ReleaseBuildError(
            f"{error.filename} not found: run through `uv run` (make does)"
        ) from None
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["failed"]
        raise ReleaseBuildError(f"`{' '.join(args[:3])} ...` failed: {last[0]}")
    return result.stdout


def _source_files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCE_PATHS:
        path = REPO / name
        if path.is_dir():
            files += [
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            ]
        elif path.is_file():
            files.append(path)
    return sorted(files)


def _content_key(target: Target, extra: str = "") -> str:
    digest = hashlib.sha256(f"{ARTIFACT_FORMAT}\0{extra}".encode())
    for path in _source_files():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{target.python}/{target.glibc}/{target.machine}".encode())
    return digest.hexdigest()


def _git_revision() -> str:
    """The last commit that touched the service, `+dirty` when its files differ from it."""
    try:
        rev = _run(["git", "log", "-1", "--format=%H", "--", *SOURCE_PATHS]).strip()
        dirty = _run(["git", "status", "--porcelain", "--", *SOURCE_PATHS]).strip()
    except (ReleaseBuildError, FileNotFoundError):
        return "unknown"
    return f"{rev or 'unknown'}{'+dirty' if dirty else ''}"


def _pip() -> list[str]:
    """pip from this interpreter if it has one, else uv's tool runner."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    return [sys.executable, "-m", "pip"] if probe.returncode == 0 else [UV, "tool", "run", "pip"]


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), mtime, 0o644
    tar.addfile(info, io.BytesIO(payload))


def build_release(target: Target) -> Release:
    """The artifact for `target`, from the cache when its inputs did not change."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    override, fault = os.environ.get(REVISION_ENV, ""), os.environ.get(FAULT_ENV, "")
    if fault and fault not in FAULTS:
        raise ReleaseBuildError(f"{FAULT_ENV}={fault!r}: known faults are {', '.join(FAULTS)}")
    if override and not re.fullmatch(r"[A-Za-z0-9._-]{1,40}", override):
        raise ReleaseBuildError(f"{REVISION_ENV}={override!r}: use 1-40 of [A-Za-z0-9._-]")
    # The fault's own text is part of the key: a changed fault is never served from the cache.
    patch = json.dumps(FAULTS.get(fault, {}), sort_keys=True)
    key = _content_key(target, f"{override}\0{fault}\0{patch}")
    git_revision = override or _git_revision()
    revision = git_revision.split("+")[0][:10]
    release_id = f"{version}-{revision}-{key[:10]}"
    artifact = CACHE_DIR / f"plinth-{release_id}-py{target.python}.tar"
    requirements = _requirements()
    deps_key, deps_artifact = _dependency_layer(target, requirements)
    if not artifact.exists():
        labels = {"version": version, "git_revision": git_revision, "release_id": release_id}
        _build(labels, target, deps_key, artifact, FAULTS.get(fault, {}))
        _prune_cache(keep=10)
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    head = EXPAND_REVISION if _NEW_MIGRATION in FAULTS.get(fault, {}) else head_revision()
    return Release(release_id, version, git_revision, artifact, sha, deps_key, deps_artifact, head)


def _prune_cache(keep: int) -> None:
    """The cache keeps the newest `keep` artifacts of each kind."""
    for pattern in ("plinth-*.tar", "deps-*.tar"):
        artifacts = sorted(CACHE_DIR.glob(pattern), key=lambda p: p.stat().st_mtime)
        for old in artifacts[:-keep]:
            old.unlink(missing_ok=True)


def _requirements() -> str:
    return _run(
        [
            UV,
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "--no-header",
            "--no-annotate",
        ]
    )


def _dependency_layer(target: Target, requirements: str) -> tuple[str, Path]:
    """(key, tar) of the layer with `requirements` for `target`, built once per key."""
    key = hashlib.sha256(f"{ARTIFACT_FORMAT}\0{requirements}\0{target}".encode()).hexdigest()[:16]
    artifact = CACHE_DIR / f"deps-{key}.tar"
    if artifact.exists():
        artifact.touch()  # in use: the newest, for _prune_cache
        return key, artifact
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = artifact.with_suffix(".partial")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        listed, wheelhouse = Path(tmp) / "requirements.txt", Path(tmp) / "wheels"
        listed.write_text(requirements)
        _download_wheels(target, listed, wheelhouse)
        with tarfile.open(partial, "w") as tar:
            for path in sorted(wheelhouse.iterdir()):
                tar.add(path, arcname=f"wheels/{path.name}", filter=_fixed_mtime)
            _add_bytes(tar, "requirements.txt", requirements.encode(), 0)
    partial.replace(artifact)
    return key, artifact


def _fixed_mtime(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The same layer from two control machines is byte for byte the same file.
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    return info


def _download_wheels(target: Target, requirements: Path, dest: Path) -> None:
    """Binary wheels of the locked dependencies for `target`, into `dest`."""
    _run(
        [
            *_pip(),
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            "--python-version",
            target.python,
            "--implementation",
            "cp",
            "--abi",
            target.abi,
            "--abi",
            "abi3",
            "--abi",
            "none",
            *(arg for tag in target.platform_tags for arg in ("--platform", tag)),
            "-r",
            str(requirements),
        ]
    )


def _build(
    labels: dict[str, str], target: Target, deps_key: str, artifact: Path, fault: dict[str, str]
):
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        source = REPO
        if fault:  # a patched copy of the tree; the working tree is never touched
            source = Path(tmp) / "source"
            source.mkdir()
            for name in SOURCE_PATHS:
                copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
                copy(REPO / name, source / name)
            for path, text in fault.items():
                text = text.replace("@REVISION@", EXPAND_REVISION)
                with (source / path).open("a") as patched:
                    patched.write(text.replace("@HEAD@", head_revision() or ""))
        wheel_dir = Path(tmp) / "wheel"
        _run([UV, "build", "--wheel", "--out-dir", str(wheel_dir)], cwd=source)
        (wheel,) = wheel_dir.glob("*.whl")
        build_time = datetime.now(UTC).replace(microsecond=0).isoformat()
        info = {**labels, "build_time": build_time, "python": target.python, "deps": deps_key}
        mtime = int(datetime.now(UTC).timestamp())
        partial = artifact.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(wheel, arcname=wheel.name)
            _add_bytes(tar, "deps", f"{deps_key}\n".encode(), mtime)
            _add_bytes(tar, "release.json", (json.dumps(info, indent=2) + "\n").encode(), mtime)
        partial.replace(artifact)


if __name__ == "__main__":
    python, glibc = sys.argv[1:3] + ["3.11", "2.36"][len(sys.argv[1:3]) :]
    release = build_release(Target(python, glibc))
    print(release.release_id, release.artifact, release.sha256)
