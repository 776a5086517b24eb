"""The vagrant-lxc box: the rehearsal's mmdebstrap recipe, plus what a Vagrant box needs.

A box is a tar of three files: `rootfs.tar.gz` (the root filesystem), `metadata.json` and
`lxc-config` (appended to the container's LXC config). The root filesystem is the rehearsal's
recipe (`infra.rehearsal.rootfs.RECIPE`) extended with: the `vagrant` user holding Vagrant's
insecure public key (Vagrant swaps it for a fresh key on first `up`), passwordless sudo, DHCP
and DNS on `eth0` (lxc-net's dnsmasq answers both), and SSH host keys made at first boot so
that no two machines from this box share one. Nothing is fetched from Vagrant Cloud.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shlex
import subprocess
import tarfile
import time
from pathlib import Path

from infra.rehearsal import rootfs
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.proc import run

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "vagrant"
BOX_VERSION = 1  # bump to force a rebuild for a change the recipe below does not show

# Where Debian's (and HashiCorp's) vagrant package ships the insecure key pair.
INSECURE_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/usr/lib/ruby/vendor_ruby/vagrant/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
)

# The rehearsal writes resolv.conf per host; a box gets DNS from DHCP through resolved.
BOX_PACKAGES = ("systemd-resolved",)

# Debian's ssh.service refuses to start without host keys and has no unit that makes them.
HOST_KEYS_UNIT = """\
[Unit]
Description=Generate SSH host keys on first boot
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""
ETH0_NETWORK = """\
[Match]
Name=eth0

[Network]
DHCP=ipv4
"""
HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""
LXC_CONFIG = """\
# vagrant-lxc appends this to the container's config (lxcbr0 networking comes from the
# machine's default.conf). common.conf: devices, cgroups and mounts systemd needs.
lxc.include = /usr/share/lxc/config/common.conf
"""


def _write(path: str, content: str, mode: str = "644") -> str:
    """A customize hook writing `content` to `path` inside the chroot ("$1")."""
    return f'printf %s {shlex.quote(content)} > "$1"{path} && chmod {mode} "$1"{path}'


def box_name(release: str) -> str:
    return f"plinth/{release}-lxc"


def insecure_public_key() -> str:
    override = os.environ.get("PLINTH_VAGRANT_INSECURE_KEY")
    candidates = [override] if override else []
    for pattern in INSECURE_KEY_GLOBS:
        candidates += sorted(glob.glob(pattern))
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path.read_text().strip()
    raise RehearsalError(
        "Vagrant's insecure public key not found (install Debian's vagrant package, "
        "or set PLINTH_VAGRANT_INSECURE_KEY to the path of vagrant.pub)"
    )


def box_recipe(public_key: str) -> dict:
    """The rehearsal's recipe plus the box's packages and hooks (run after the rehearsal's)."""
    hooks = (
        'chroot "$1" useradd --create-home --user-group --shell /bin/bash vagrant',
        'install -d -m 700 "$1"/home/vagrant/.ssh',
        _write("/home/vagrant/.ssh/authorized_keys", public_key + "\n", "600"),
        'chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh',
        _write("/etc/sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD:ALL\n", "440"),
        _write("/etc/systemd/system/ssh-host-keys.service", HOST_KEYS_UNIT),
        'systemctl --root="$1" enable ssh-host-keys.service',
        _write("/etc/systemd/network/20-eth0.network", ETH0_NETWORK),
        'systemctl --root="$1" enable systemd-resolved.service',
        'ln -sf ../run/systemd/resolve/stub-resolv.conf "$1"/etc/resolv.conf',
        _write("/etc/hosts", HOSTS),
    )
    return {
        **rootfs.RECIPE,
        "include": (*rootfs.PACKAGES, *BOX_PACKAGES),
        "customize_hooks": (*rootfs.CUSTOMIZE_HOOKS, *hooks),
    }


def box_path(cache_dir: Path, release: str, recipe: dict) -> Path:
    """Named after everything in it: the root filesystem's recipe, the LXC config, BOX_VERSION."""
    key = rootfs.cache_key(release, {**recipe, "box": [BOX_VERSION, LXC_CONFIG]})
    return cache_dir / "boxes" / f"plinth-{release}-lxc-{key}.box"


def ensure_box(cache_dir: Path, release: str) -> tuple[Path, float | None]:
    """The box file for `release`, built first if its recipe changed (and the build time)."""
    recipe = box_recipe(insecure_public_key())
    target = box_path(cache_dir, release, recipe)
    if target.exists():
        return target, None
    started = time.monotonic()
    tarball, _ = rootfs.ensure_tarball(cache_dir / "rootfs", release, recipe)
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = target.parent / f".{target.stem}.{os.getpid()}.partial"
    workdir.mkdir()
    try:
        _pack(tarball, workdir, target)
    finally:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    for old in target.parent.glob(f"plinth-{release}-lxc-*.box"):
        if old != target:
            old.unlink(missing_ok=True)
    return target, time.monotonic() - started


def _pack(tarball: Path, workdir: Path, target: Path) -> None:
    rootfs_gz = workdir / "rootfs.tar.gz"
    # Recompress without unpacking: mmdebstrap's tar already has numeric owners and xattrs,
    # and its members are "./etc/...", hence one component stripped (vagrant-lxc strips two,
    # for the "./rootfs/etc/..." of boxes it packages itself).
    with open(rootfs_gz, "wb") as out:
        zstd = subprocess.Popen(["zstd", "-dcq", str(tarball)], stdout=subprocess.PIPE)
        gzip = subprocess.run(["gzip", "-1"], stdin=zstd.stdout, stdout=out, check=False)
        assert zstd.stdout is not None
        zstd.stdout.close()
        if zstd.wait() != 0 or gzip.returncode != 0:
            raise RehearsalError(f"recompressing {tarball} for the box failed")
    metadata = {
        "provider": "lxc",
        "version": "1.0.0",
        "built-on": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "template-opts": {"--strip-components": "1"},
    }
    (workdir / "metadata.json").write_text(json.dumps(metadata) + "\n")
    (workdir / "lxc-config").write_text(LXC_CONFIG)
    partial = target.with_name(f".{target.name}.partial")
    with tarfile.open(partial, "w") as box:
        for name in ("metadata.json", "lxc-config", "rootfs.tar.gz"):
            box.add(workdir / name, arcname=name)
    os.replace(partial, target)


def add_box(box: Path, release: str, env: dict[str, str] | None = None) -> None:
    """`vagrant box add --force`: replaces an older build under the same name."""
    run(
        ["vagrant", "box", "add", "--force", "--name", box_name(release), str(box)],
        what=f"vagrant box add {box_name(release)}",
        env=env,
        timeout=600,
    )
