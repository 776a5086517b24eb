"""Vagrant: the Vagrantfile validates; `vagrant up --provider=lxc` on the box this project builds
ends with plinth deployed (the Vagrantfile's trigger runs the pyinfra deploy), the same host
checks as the nspawn rehearsal pass against that machine (tests/infra/test_host_*.py, run with
the Vagrant inventory), and `vagrant destroy -f` leaves nothing behind.

Vagrant's and LXC's files stay under .cache/vagrant/test (infra/vagrant/sandbox.py); lxc-net's
bridge and NAT are started only when no lxcbr0 exists, and then removed again."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infra.vagrant import box, sandbox

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "vagrant"
RELEASE = "bookworm"
MACHINE = "plinth"
GROUP_DATA = REPO / "infra" / "inventories" / "group_data" / "vagrant.py"
# The rehearsal's own host checks and its idempotence check, run unchanged against the machine.
HOST_CHECKS = [
    *sorted(Path(__file__).parent.glob("test_host_*.py")),
    *Path(__file__).parent.glob("test_idempotence.py"),
]
SELF_SIGNED_CERT = "/etc/ssl/plinth/self-signed.crt"  # infra/deploys/tls.py


@dataclass
class Lab:
    sandbox: sandbox.Sandbox
    started_net: bool
    before: dict
    timings: dict[str, float] = field(default_factory=dict)

    def vagrant(self, *args: str, timeout: float = 900, **env) -> subprocess.CompletedProcess:
        return self.sandbox.run(
            ["vagrant", *args],
            extra_env=env,
            cwd=REPO,
            check=False,
            capture_output=True,
            timeout=timeout,
        )


def _host_state() -> dict:
    return {
        "run_lxc": sandbox.LXC_RUN_DIR.exists(),
        "leases": sandbox.DNSMASQ_LEASES.exists(),
        "ip_forward": sandbox.IP_FORWARD.read_text().strip(),
    }


def _dnsmasq_on_bridge() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"dnsmasq") and b"--interface=lxcbr0" in args:
                pids.append(int(proc.name))
    return pids


def _tail(result: subprocess.CompletedProcess, lines: int = 40) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def test_vagrantfile_validates(tmp_path):
    sandbox.require_tools()  # Debian's vagrant and vagrant-lxc, as the machine tests use
    env = {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    # The whole file as configuration (VirtualBox and libvirt are not installed here), then
    # with the LXC provider's own checks through the installed vagrant-lxc plugin.
    for provider, extra in (("lxc", ["--ignore-provider"]), ("lxc", [])):
        result = subprocess.run(
            ["vagrant", "validate", *extra],
            cwd=REPO,
            env={**env, "VAGRANT_DEFAULT_PROVIDER": provider},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"vagrant validate {extra}: {_tail(result)}"
        assert "validated successfully" in result.stdout


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root: LXC containers and the lxcbr0 bridge")
    sandbox.require_tools()
    lab = Lab(sandbox.Sandbox(CACHE / "test"), started_net=False, before=_host_state())
    lab.sandbox.prepare()
    lab.vagrant("destroy", "-f", timeout=300)  # a machine an interrupted run left
    lab.started_net = lab.sandbox.net_up()
    try:
        yield lab
    finally:
        lab.vagrant("destroy", "-f", timeout=300)
        lab.sandbox.net_down()
        print(f"\nvagrant timings (s): {json.dumps(lab.timings)}", file=sys.stderr)


@pytest.fixture(scope="module")
def machine(lab) -> dict:
    """`vagrant up --provider=lxc` on a freshly added box; returns a host.json for the checks."""
    started = time.monotonic()
    path, _ = box.ensure_box(CACHE, RELEASE)
    box.add_box(path, RELEASE, env=lab.sandbox.env())
    lab.timings["box build and add"] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    up = lab.vagrant("up", "--provider=lxc")
    lab.timings["vagrant up with deploy"] = round(time.monotonic() - started, 1)
    assert up.returncode == 0, _tail(up)
    assert "Machine booted and ready!" in up.stdout
    assert "Deploying plinth with pyinfra" in up.stdout, "the after-up trigger did not run"

    config = lab.vagrant("ssh-config", MACHINE, timeout=120)
    assert config.returncode == 0, _tail(config)
    ssh = dict(line.strip().split(" ", 1) for line in config.stdout.splitlines() if line.strip())
    # The certificate HTTPS clients must trust: on this self-signed host, the certificate itself
    # (`acme_root` in the rehearsal's host.json contract names the same thing for pebble's).
    cert = lab.vagrant("ssh", MACHINE, "-c", f"cat {SELF_SIGNED_CERT}", timeout=120)
    assert "BEGIN CERTIFICATE" in cert.stdout, _tail(cert)
    tls_root = lab.sandbox.root / "tls-root.pem"
    tls_root.write_text(cert.stdout)
    info = {
        "address": ssh["HostName"],
        "ssh_user": ssh["User"],
        "ssh_key": ssh["IdentityFile"].strip('"'),
        "domain": runpy.run_path(str(GROUP_DATA))["domain"],
        "release": RELEASE,
        "acme_root": str(tls_root),
    }
    (lab.sandbox.root / "host.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def test_vagrant_up_boots_a_running_systemd_host(lab, machine):
    result = lab.vagrant("ssh", MACHINE, "-c", "systemctl is-system-running", timeout=120)
    assert result.stdout.strip() == "running", _tail(result)


def test_the_rehearsal_host_checks_pass_on_the_vagrant_machine(lab, machine):
    if not HOST_CHECKS:
        pytest.skip("no tests/infra/test_host_*.py yet")
    # Their `first_deploy` re-deploys through the Vagrant inventory (the trigger deployed first).
    started = time.monotonic()
    result = lab.sandbox.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, HOST_CHECKS)],
        extra_env={
            "PLINTH_INFRA_INVENTORY": "infra/inventories/vagrant.py",
            "PLINTH_REHEARSAL_HOST_JSON": str(lab.sandbox.root / "host.json"),
        },
        cwd=REPO,
        check=False,
        capture_output=True,
        timeout=900,
    )
    lab.timings["host checks (re-deploy included)"] = round(time.monotonic() - started, 1)
    log = lab.sandbox.root / "host-checks.log"
    log.write_text(result.stdout + result.stderr)
    print(_tail(result, 15), file=sys.stderr)
    assert result.returncode == 0, f"{_tail(result, 40)}\n(whole output: {log})"


def test_vagrant_destroy_leaves_nothing_behind(lab, machine):
    started = time.monotonic()
    result = lab.vagrant("destroy", "-f", timeout=300)
    lab.timings["vagrant destroy"] = round(time.monotonic() - started, 1)
    assert result.returncode == 0, _tail(result)
    assert lab.sandbox.containers() == [], "a container is left in the sandbox's lxcpath"
    assert not list(lab.sandbox.lxcpath.iterdir())
    assert not (lab.sandbox.dotfile / "machines" / MACHINE / "lxc" / "id").exists()

    lab.sandbox.net_down()
    if lab.started_net:
        assert not sandbox.bridge_exists(), "lxcbr0 is left"
        assert sandbox.lxc_nat_tables() == [], "lxc-net's NAT tables are left"
        assert _dnsmasq_on_bridge() == [], "lxc-net's dnsmasq is still running"
    assert _host_state() == lab.before
