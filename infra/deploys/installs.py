"""Installing releases on the host: the shared dependency layers and the releases on top.

A layer (`/srv/plinth/deps/<key>/venv`) holds the locked dependencies, installed and compiled
once for every release of that lock; a release's own venv holds only the app's wheel and a
`.pth` file naming its layer's site-packages. Both are immutable once their marker is written.
A layer goes when no release left on the host names it (after the releases are pruned).
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.facts.files import File

from infra.deploys.cutover import WORK_LOCK

# A release's wheel is installed by pypa's installer from this Debian package, whose module
# lives in INSTALLER_PATH (the app deploy installs the package).
RELEASE_INSTALLER_PACKAGE = "python3-installer"
INSTALLER_PATH = "/usr/lib/python3/dist-packages"
# Debian's own pip wheel runs pip without installing it, so no venv keeps a pip of its own;
# without that wheel (not Debian's layout), a venv's own pip does the install.
_PIP = (
    'PIP=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | tail -n 1) && if [ -n "$PIP" ]; '
    'then python3 -m venv --without-pip {venv} && {venv}/bin/python "$PIP/pip" {args}; '
    "else python3 -m venv {venv} && {venv}/bin/pip {args}; fi"
)
_PIP_INSTALL = "install --quiet --no-index --no-cache-dir --disable-pip-version-check"
_SITE_PACKAGES = (
    "$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))')"
)


def _pip(venv: str, args: str) -> str:
    return _PIP.format(venv=venv, args=f"{_PIP_INSTALL} {args}")


def _under_work_lock(command: str) -> str:
    """`command` run holding the work lock (shared), as a migration or a cutover does: a
    deploy whose connection ends mid-install keeps the deploy lock until the install (which
    sshd does not stop) has ended, so the next deploy never installs into the same directory
    beside it."""
    return f"flock -s {WORK_LOCK} sh -c {shlex.quote(command)}"


@operation()
def layer_installed(layer_dir: str, artifact: str, marker: str):
    """Unpack the layer's `artifact` (removed afterwards) and install its wheels offline."""
    if host.get_fact(File, path=f"{layer_dir}/{marker}"):
        host.noop(f"dependency layer {layer_dir} is installed")
        return
    d, a = shlex.quote(layer_dir), shlex.quote(artifact)
    yield _under_work_lock(
        f"rm -rf {d} && mkdir -p {d} && tar -C {d} -xf {a} "
        f"&& {_pip(f'{d}/venv', f'--find-links {d}/wheels -r {d}/requirements.txt')} "
        f"&& rm -rf {d}/wheels {a} && chmod -R go-w {d} && touch {d}/{shlex.quote(marker)}"
    )


@operation()
def release_installed(release_dir: str, artifact: str, marker: str, layer_dir: str, pth: str):
    """Unpack `artifact` into `release_dir` and build its venv: the app's wheel alone, on top
    of the layer at `layer_dir` (named by `pth` in its site-packages). A release with its
    marker is complete and never touched again (releases are immutable)."""
    if host.get_fact(File, path=f"{release_dir}/{marker}"):
        host.noop(f"release {release_dir} is installed")
        return
    d, a = shlex.quote(release_dir), shlex.quote(artifact)
    layer_site = _SITE_PACKAGES.format(venv=shlex.quote(f"{layer_dir}/venv"))
    release_site = _SITE_PACKAGES.format(venv=f"{d}/venv")
    yield _under_work_lock(
        f"test -f {shlex.quote(layer_dir)}/{shlex.quote(marker)} "
        f"&& rm -rf {d} && mkdir -p {d} && tar -C {d} -xf {a} "
        # --copies: the release's own interpreter binary is what the running Gunicorn maps,
        # which is how plinth-release tells which release a master runs (its dependencies'
        # libraries are mapped from the shared layer now).
        f"&& python3 -m venv --copies --without-pip {d}/venv "
        # One wheel, no dependencies: pypa's installer (Debian's python3-installer, run by the
        # venv's interpreter so it installs into the venv) does it in 0.1 s where pip, run
        # from Debian's zipped wheel, spent 2.5 s compiling itself on every release.
        f"&& PYTHONPATH={INSTALLER_PATH} {d}/venv/bin/python -m installer {d}/plinth-*.whl "
        f'&& echo "{layer_site}" > "{release_site}/{shlex.quote(pth)}" '
        f"&& chmod -R go-w {d} && touch {d}/{shlex.quote(marker)}"
    )


class UnusedLayers(FactBase):
    """Layers in `layers_dir` that no release in `releases_dir` names in its `deps` file."""

    def command(self, layers_dir, releases_dir):
        layers, releases = shlex.quote(layers_dir), shlex.quote(releases_dir)
        return (
            f"cd {layers} 2>/dev/null || exit 0; for layer in */; do layer=${{layer%/}}; "
            f'cat {releases}/*/deps 2>/dev/null | grep -qxF "$layer" || echo "$layer"; done'
        )

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [line for line in output if line.strip() and line.strip() != "*"]


@operation()
def unused_layers_pruned(layers_dir: str, releases_dir: str, protect: str):
    """Remove the layers no release uses any more (never `protect`, the one being deployed)."""
    unused = [
        layer
        for layer in host.get_fact(UnusedLayers, layers_dir=layers_dir, releases_dir=releases_dir)
        if layer != protect
    ]
    if not unused:
        host.noop(f"{layers_dir}: every layer is in use")
        return
    yield "rm -rf -- " + " ".join(shlex.quote(f"{layers_dir}/{layer}") for layer in unused)
