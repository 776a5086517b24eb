"""A Vagrant + LXC environment that keeps every file it makes under one directory.

For the tests, and for a root shell on a machine without systemd (like CI): Vagrant's home and
the machine's `.vagrant` state go under `<dir>` through `VAGRANT_HOME` and
`VAGRANT_DOTFILE_PATH`; LXC's containers go under `<dir>/lxc`. LXC reads its `lxc.lxcpath` for
root only from `/etc/lxc/lxc.conf`, so instead of editing that file the commands run in a private
mount namespace where `<dir>/etc-lxc` is bind-mounted over `/etc/lxc`; the container's monitor
is started in that namespace and keeps it alive while the container runs.

`net_up` starts lxc-net (the lxcbr0 bridge, its NAT and dnsmasq) when no bridge exists, as
systemd's lxc-net.service would; `net_down` stops it again only if `net_up` started it and
removes what lxc-net leaves behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.proc import run

LXC_NET = "/usr/libexec/lxc/lxc-net"
LXC_NET_DEFAULTS = Path("/etc/default/lxc-net")
BRIDGE = "lxcbr0"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
LXC_RUN_DIR = Path("/run/lxc")
DNSMASQ_LEASES = Path(f"/var/lib/misc/dnsmasq.{BRIDGE}.leases")

# binary -> Debian package. Installed without recommends (with them, vagrant drags in a kernel).
TOOLS = {
    "vagrant": "vagrant",
    "lxc-create": "lxc",
    "dnsmasq": "dnsmasq-base",  # lxc-net's DHCP and DNS on lxcbr0
    "nft": "nftables",  # lxc-net's NAT
    "unshare": "util-linux",
    "mmdebstrap": "mmdebstrap",
    "zstd": "zstd",
}
VAGRANT_LXC_PLUGIN = "/usr/share/rubygems-integration/all/gems/vagrant-lxc-*"


def require_tools() -> None:
    """Install the Debian packages of missing tools (and the vagrant-lxc plugin)."""
    packages = {package for binary, package in TOOLS.items() if not shutil.which(binary)}
    plugin = run(["dpkg-query", "-W", "-f=${Status}", "vagrant-lxc"], check=False)
    if "install ok installed" not in plugin.stdout:
        packages.add("vagrant-lxc")
    if not packages:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Other test lanes may be installing too: wait for dpkg's lock rather than fail.
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    argv = ["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *sorted(packages)]
    if run(argv, check=False, env=env, timeout=600).returncode != 0:
        run(["apt-get", "update", "-q"], check=False, env=env, timeout=600)
        run(argv, what=f"installing {' '.join(sorted(packages))}", env=env, timeout=600)


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.vagrant_home = self.root / "home"
        self.dotfile = self.root / "dotfile"
        self.lxcpath = self.root / "lxc"
        self.lxc_conf_dir = self.root / "etc-lxc"
        self.net_state = self.root / "net.json"

    def prepare(self) -> None:
        for path in (self.vagrant_home, self.dotfile, self.lxcpath, self.lxc_conf_dir):
            path.mkdir(parents=True, exist_ok=True)
        (self.lxc_conf_dir / "lxc.conf").write_text(f"lxc.lxcpath = {self.lxcpath}\n")
        # The machine's default container config (lxcbr0 veth), which the bind mount hides.
        default = Path("/etc/lxc/default.conf")
        text = default.read_text() if default.exists() else _DEFAULT_CONF
        (self.lxc_conf_dir / "default.conf").write_text(text)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            VAGRANT_HOME=str(self.vagrant_home),
            VAGRANT_DOTFILE_PATH=str(self.dotfile),
            VAGRANT_DEFAULT_PROVIDER="lxc",
            VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
        )
        return env

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` inside a private mount namespace where /etc/lxc is our config dir."""
        script = 'mount --bind "$0" /etc/lxc && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            str(self.lxc_conf_dir),
            *command,
        ]

    def run(
        self, command: Sequence[str], extra_env: dict[str, str] | None = None, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        """Run inside the sandbox; output goes to the caller's stdout/stderr unless captured."""
        kwargs.setdefault("check", True)
        kwargs.setdefault("text", True)
        env = {**self.env(), **(extra_env or {})}
        return subprocess.run(self.argv(command), env=env, **kwargs)

    def containers(self) -> list[str]:
        if not self.lxcpath.is_dir():
            return []
        return sorted(p.name for p in self.lxcpath.iterdir() if (p / "config").exists())

    # --- lxcbr0 ------------------------------------------------------------------------------

    def net_up(self) -> bool:
        """Start lxc-net unless a bridge is already there; True when this call started it."""
        if bridge_exists():
            return False
        if "true" not in _lxc_net_setting("USE_LXC_BRIDGE"):
            raise RehearsalError(f"USE_LXC_BRIDGE is not true in {LXC_NET_DEFAULTS}")
        state = {
            "started": True,
            "ip_forward": IP_FORWARD.read_text().strip(),
            "run_dir_existed": LXC_RUN_DIR.exists(),
            "leases_existed": DNSMASQ_LEASES.exists(),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self.net_state.write_text(json.dumps(state) + "\n")
        run([LXC_NET, "start"], what="lxc-net start")
        return True

    def net_down(self) -> None:
        """Undo net_up: stop lxc-net (bridge, NAT, dnsmasq) and remove what it left behind."""
        if not self.net_state.exists():
            return
        state = json.loads(self.net_state.read_text())
        run([LXC_NET, "stop"], check=False, what="lxc-net stop")
        if bridge_exists():  # lxc-net keeps a bridge that still has ports; we started it
            run(["ip", "link", "delete", BRIDGE], check=False)
        if not state["leases_existed"]:
            DNSMASQ_LEASES.unlink(missing_ok=True)
        if not state["run_dir_existed"] and not self.containers():
            shutil.rmtree(LXC_RUN_DIR, ignore_errors=True)
        # lxc-net turns forwarding on and never back off. Restore it only when no other NAT of
        # ours (a rehearsal host) may need it.
        if state["ip_forward"] == "0" and not _other_nat_tables():
            IP_FORWARD.write_text("0\n")
        self.net_state.unlink()


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def lxc_nat_tables() -> list[str]:
    """lxc-net's nftables tables (`inet lxc`, `ip lxc`), if any."""
    result = run(["nft", "list", "tables"], check=False)
    return [line for line in result.stdout.splitlines() if line.split()[-1:] == ["lxc"]]


def _other_nat_tables() -> bool:
    result = run(["nft", "list", "tables"], check=False)
    return any(line.split()[-1:] != ["lxc"] for line in result.stdout.splitlines() if line)


def _lxc_net_setting(key: str) -> str:
    try:
        lines = LXC_NET_DEFAULTS.read_text().splitlines()
    except OSError:
        return "true"  # lxc-net's own default
    values = [line.split("=", 1)[1].strip().strip("\"'") for line in lines if line.startswith(key)]
    return values[-1] if values else "true"


_DEFAULT_CONF = """\
lxc.net.0.type = veth
lxc.net.0.link = lxcbr0
lxc.net.0.flags = up
"""
