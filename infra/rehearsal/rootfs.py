"""The rehearsal's root filesystem: built once by mmdebstrap, cached as .tar.zst, unpacked per run.

The cached tarball holds nothing specific to one rehearsal (no key, address, hostname, host
keys), so one tarball serves any of them; `personalize` writes those at unpack time. The cache
key is a hash of the recipe below plus the release: change the recipe and it is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.proc import run, say

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",  # pyinfra's facts and testinfra need it
    "sudo",
    "ca-certificates",
    "iproute2",
    "netbase",
    "procps",
)
# Hooks run by mmdebstrap with the chroot as "$1". Constants only: nothing from the user.
CUSTOMIZE_HOOKS = (
    # The container's static address comes from a networkd file written at unpack time.
    'systemctl --root="$1" enable systemd-networkd.service',
    # Host keys are made per rehearsal; a shared cached key would be a shared secret.
    'rm -f "$1"/etc/ssh/ssh_host_*',
    # Written per rehearsal from the control machine's own.
    'rm -f "$1"/etc/resolv.conf "$1"/etc/hostname',
)
RECIPE = {
    "tool": "mmdebstrap",
    "variant": "minbase",
    "include": PACKAGES,
    "customize_hooks": CUSTOMIZE_HOOKS,
    "format": "tar.zst",
    "version": 1,  # bump to force a rebuild for a change the fields above do not show
}


def cache_key(release: str, recipe: dict = RECIPE) -> str:
    text = json.dumps({"release": release, **recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tarball_path(cache_dir: Path, release: str, recipe: dict = RECIPE) -> Path:
    return cache_dir / f"{release}-{cache_key(release, recipe)}.tar.zst"


def ensure_tarball(
    cache_dir: Path, release: str, recipe: dict = RECIPE
) -> tuple[Path, float | None]:
    """Return the cached tarball, building it first if needed (and the build time, if built).

    `recipe`: RECIPE, or one extending it (more packages and hooks, e.g. the Vagrant box's),
    cached in its own `cache_dir` since older tarballs in the directory are removed."""
    target = tarball_path(cache_dir, release, recipe)
    if target.exists():
        return target, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two rehearsals (or a test beside a live one) building the same release wait for each other.
    with _cache_lock(cache_dir / f".{release}.lock"):
        if target.exists():
            return target, None
        say(f"building the {release} root filesystem with mmdebstrap (once; cached in {cache_dir})")
        started = time.monotonic()
        partial = cache_dir / f".{target.name[: -len('.tar.zst')]}.{os.getpid()}.partial.tar.zst"
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(recipe['include'])}",
            *(f"--customize-hook={hook}" for hook in recipe["customize_hooks"]),
            release,  # no mirror: mmdebstrap's default (updates and security added for stable)
            str(partial),
        ]
        try:
            run(argv, what=f"mmdebstrap ({release})", timeout=1800)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        for old in cache_dir.glob(f"{release}-*.tar.zst"):
            if old != target:  # an older recipe's tarball: never used again
                old.unlink(missing_ok=True)
        return target, time.monotonic() - started


@contextlib.contextmanager
def _cache_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def unpack(tarball: Path, rootfs: Path, tmpfs_size: str | None, name: str) -> None:
    """Unpack onto a tmpfs mounted at `rootfs` (or plain disk when tmpfs_size is None).

    Measured on these VMs' ext4 (mounted with `discard`): creating the 13,000 files takes
    10-15 s of kernel time once the disk has seen deletions, against under 1 s on tmpfs; and
    `down` is then an unmount instead of a slow rm -rf. The host's data lives in RAM, which is
    what a throwaway rehearsal wants (size is a cap, not a reservation)."""
    if rootfs.exists():
        raise RehearsalError(f"{rootfs} already exists (left over?): run down first")
    rootfs.mkdir(mode=0o755)
    if tmpfs_size:
        options = f"size={tmpfs_size},mode=0755"
        run(
            ["mount", "-t", "tmpfs", "-o", options, name, str(rootfs)],  # source: shown by `mount`
            what=f"mounting a tmpfs on {rootfs}",
        )
    run(
        [
            "tar",
            "--zstd",
            "-xpf",
            str(tarball),
            "-C",
            str(rootfs),
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",  # file capabilities (e.g. ping) live in xattrs
        ],
        what="unpacking the root filesystem",
    )


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as mountinfo:
        # Field 5 is the mount point, with spaces and such octal-escaped.
        return any(_unescape(line.split()[4]) == target for line in mountinfo)


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def personalize(
    rootfs: Path,
    *,
    name: str,
    address: str,
    prefixlen: int,
    gateway: str,
    authorized_key: str,
) -> None:
    """Write what makes this rootfs this rehearsal's host. Paths are checked so that a symlink
    inside the image can never redirect a write onto the control machine."""
    put(rootfs, "etc/hostname", f"{name}\n")
    put(
        rootfs,
        "etc/hosts",
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{name}\n"  # sudo resolves its own hostname
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n",
    )
    put(
        rootfs,
        "etc/systemd/network/10-plinth-host0.network",
        # 10- sorts before systemd's own 80-container-host0.network (DHCP), so it wins.
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={address}/{prefixlen}\nGateway={gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n",
    )
    put(rootfs, "etc/resolv.conf", host_resolv_conf())
    put(rootfs, "root/.ssh/authorized_keys", authorized_key.strip() + "\n", mode=0o600)
    os.chmod(_inside(rootfs, "root/.ssh"), 0o700)
    # Fresh host keys for every rehearsal. No RSA key: making one takes 0.3-2 s, and sshd
    # (and its `sshd -t` check) start fine with the ed25519 and ECDSA keys alone.
    for kind in ("ed25519", "ecdsa"):
        key = _inside(rootfs, f"etc/ssh/ssh_host_{kind}_key")
        run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{name}", "-f", str(key)],
            what="generating SSH host keys",
        )


def host_resolv_conf() -> str:
    """The control machine's resolver config, unless it points at a local stub (127.0.0.53),
    which the container cannot reach: then the stub's upstream list."""
    for candidate in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        try:
            text = Path(candidate).read_text()
        except OSError:
            continue
        servers = [line.split()[1] for line in text.splitlines() if _is_nameserver(line)]
        if servers and not all(s.startswith("127.") or s == "::1" for s in servers):
            return text
    raise RehearsalError("no usable nameserver in /etc/resolv.conf for the rehearsal host")


def _is_nameserver(line: str) -> bool:
    parts = line.split()
    return len(parts) >= 2 and parts[0] == "nameserver"


def _inside(rootfs: Path, relative: str) -> Path:
    """rootfs/relative, refusing any symlink on the way (the image is not trusted to be ours)."""
    current = rootfs
    for part in Path(relative).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise RehearsalError(f"refusing to write through symlink {current}")
        current.mkdir(mode=0o755, exist_ok=True)
    return current / Path(relative).parts[-1]


def put(rootfs: Path, relative: str, content: str, mode: int = 0o644) -> None:
    target = _inside(rootfs, relative)
    if target.is_symlink() or target.exists():
        target.unlink()  # e.g. resolv.conf as a symlink into /run: replace, never follow
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(target, mode)


def remove(rootfs: Path) -> None:
    """Unmount (the container must be stopped), then delete what is left on disk."""
    if rootfs.is_symlink() or not rootfs.is_dir():
        return
    while is_mounted(rootfs):
        result = run(["umount", str(rootfs)], check=False)
        if result.returncode != 0:
            # Something still uses it: detach it now, the kernel frees it when unused.
            run(["umount", "--lazy", str(rootfs)], what=f"unmounting {rootfs}")
    # --one-file-system: never descend into a mount should one remain below.
    run(["rm", "-rf", "--one-file-system", "--", str(rootfs)], what=f"removing {rootfs}")
