"""The rehearsal tool itself (`python -m infra.rehearsal`): its failure paths and real boots.

Every test runs the CLI as a subprocess, as `make rehearse` does, with its own state directory,
machine name and subnet, so the suite can run beside a live rehearsal (and the TLS or deploy
work's own). Failure paths assert: exit status 1, exactly one line on stderr, no traceback, and
nothing left on the machine (state, nft table, veth, mount, processes). The real boots reuse the
cached root filesystem (~/.cache/plinth or $PLINTH_CACHE_DIR): the first run ever builds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.rehearsal.proc import start_time

REPO = Path(__file__).resolve().parents[2]
NAME = "plinth-ttest"  # ve-plinth-ttest: exactly 15 characters, nspawn keeps it
TABLE = "plinth_ttest"
SUBNET = "10.213.250.0/24"
GATEWAY = "10.213.250.1"
ADDRESS = "10.213.250.2"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"),
    reason="the rehearsal tool needs root (and runuser for the not-root test)",
)


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "rehearsal"


@pytest.fixture
def env(state_dir: Path):
    """Environment for a test rehearsal; whatever a test leaves running is taken down after."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("PLINTH_REHEARSAL_")
    }
    environment.update(
        PLINTH_REHEARSAL_DIR=str(state_dir),
        PLINTH_REHEARSAL_NAME=NAME,
        PLINTH_REHEARSAL_SUBNET=SUBNET,
        PYTHONDONTWRITEBYTECODE="1",
    )
    yield environment
    cli("down", env={**environment, "PLINTH_REHEARSAL_LOCK_TIMEOUT": "30"})


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.rehearsal", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rehearsal: error: "), lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_clean(state_dir: Path) -> None:
    """Nothing of the test rehearsal is left: state, NAT table, veth, mount, processes."""
    leftovers = sorted(p.name for p in state_dir.iterdir()) if state_dir.exists() else []
    assert leftovers == [], leftovers
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"table ip {TABLE}" not in tables
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"ve-{NAME}" not in links
    addresses = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    assert GATEWAY not in addresses
    assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert str(state_dir) not in command, command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ssh(state_dir: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(state_dir / "ssh_config"), "rehearsal", "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- failure paths: each one line, exit 1, nothing left ---------------------------------------


def test_not_root_fails_with_one_line(state_dir: Path, env: dict[str, str]) -> None:
    # The system python (the CLI needs only the standard library): the project's venv
    # interpreter may live under /root, which nobody cannot enter.
    for command in ("up", "down"):
        result = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-m", "infra.rehearsal", command],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert_one_line_error(result, "must run as root")
    assert_clean(state_dir)


def test_uninstallable_host_tool_fails_with_one_line(state_dir, env) -> None:
    env["PLINTH_REHEARSAL_EXTRA_TOOLS"] = "plinth-no-such-tool=plinth-no-such-package"
    result = cli("up", env=env)
    assert_one_line_error(
        result, "cannot install host packages plinth-no-such-package", "plinth-no-such-tool"
    )
    assert_clean(state_dir)


def test_tool_still_missing_after_install_fails_with_one_line(state_dir, env) -> None:
    # zstd is installed already: apt-get succeeds, and the binary is still not there.
    env["PLINTH_REHEARSAL_EXTRA_TOOLS"] = "plinth-no-such-binary=zstd"
    result = cli("up", env=env)
    assert_one_line_error(
        result, "host tool plinth-no-such-binary is still missing", "Debian package zstd"
    )
    assert_clean(state_dir)


@pytest.fixture
def dummy_link():
    """A spare interface, removed after the test whatever happens. A veth pair: this kernel
    has no dummy driver, and nspawn needs veth anyway."""
    name = "plinth-tdummy"
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", "plinth-tdummy1"], check=True
    )
    yield name
    subprocess.run(["ip", "link", "del", name], check=True)


def test_subnet_address_in_use_fails_with_one_line(state_dir, env, dummy_link) -> None:
    subprocess.run(["ip", "addr", "add", "10.213.250.77/24", "dev", dummy_link], check=True)
    result = cli("up", env=env)
    assert_one_line_error(result, f"subnet {SUBNET} is already in use", dummy_link)
    assert_clean(state_dir)


def test_subnet_route_in_use_fails_with_one_line(state_dir, env, dummy_link) -> None:
    subprocess.run(["ip", "link", "set", dummy_link, "up"], check=True)
    subprocess.run(["ip", "route", "add", "10.213.250.128/25", "dev", dummy_link], check=True)
    result = cli("up", env=env)
    assert_one_line_error(result, f"subnet {SUBNET} is already in use", "route 10.213.250.128/25")
    assert_clean(state_dir)


def test_tcp_port_in_use_fails_with_one_line(state_dir, env) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A wildcard listener takes the port on every address, the gateway's included.
        sock.bind(("0.0.0.0", 0))  # noqa: S104
        sock.listen()
        port = sock.getsockname()[1]
        env["PLINTH_REHEARSAL_PEBBLE_PORT"] = str(port)
        result = cli("up", env=env)
    assert_one_line_error(
        result, f"port {port}/tcp (pebble) is already in use", f"pid {os.getpid()}"
    )
    assert_clean(state_dir)


def test_udp_dns_port_in_use_fails_with_one_line(state_dir, env) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))  # noqa: S104
        port = sock.getsockname()[1]
        env["PLINTH_REHEARSAL_DNS_PORT"] = str(port)
        result = cli("up", env=env)
    assert_one_line_error(result, f"port {port}/udp (dns) is already in use")
    assert_clean(state_dir)


def test_invalid_settings_fail_with_one_line(state_dir, env) -> None:
    assert_one_line_error(cli("up", "--subnet", "10.213.250.0/33", env=env), "invalid subnet")
    assert_one_line_error(cli("up", "--subnet", "8.8.8.0/24", env=env), "private IPv4")
    assert_one_line_error(cli("up", "--name", "Bad_Name", env=env), "invalid machine name")
    # A trailing newline (a value read from a file) would name the machine, its veth and its
    # nftables table with a line break in them.
    assert_one_line_error(cli("up", "--name", "plinth\n", env=env), "invalid machine name")
    assert_one_line_error(cli("up", "--domain", "a.test\n", env=env), "invalid domain")
    peers = {**env, "PLINTH_REHEARSAL_PEERS": "10.213.251.0/24,10.213.250.128/25"}
    assert_one_line_error(cli("up", env=peers), "peer subnet 10.213.250.128/25 overlaps")
    peers["PLINTH_REHEARSAL_PEERS"] = "10.213.251.0/24,nonsense"
    assert_one_line_error(cli("up", env=peers), "invalid subnet 'nonsense'")
    assert_clean(state_dir)


HOLDER = """
import sys
from pathlib import Path
from infra.rehearsal.lock import state_lock
with state_lock(Path(sys.argv[1]), 0, "up"):
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the test closes our stdin
"""


@contextlib.contextmanager
def lock_holder(state_dir: Path, env: dict[str, str]):
    """Another process holding the lock exactly as a concurrent `up` would."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir)],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def test_concurrent_run_fails_on_the_lock_naming_the_holder(state_dir, env) -> None:
    env["PLINTH_REHEARSAL_LOCK_TIMEOUT"] = "1"
    with lock_holder(state_dir, env) as holder:
        started = time.monotonic()
        result = cli("up", env=env)
        waited = time.monotonic() - started
        assert_one_line_error(
            result, "another rehearsal up/down is running", f"pid {holder.pid} (up)", "after 1s"
        )
        assert waited >= 1.0
        # The failed run made nothing: only the holder's lock file is there.
        assert sorted(p.name for p in state_dir.iterdir()) == ["lock"]
    assert_clean(state_dir)


def test_concurrent_run_waits_for_a_short_holder(state_dir, env) -> None:
    env["PLINTH_REHEARSAL_LOCK_TIMEOUT"] = "30"
    with lock_holder(state_dir, env) as holder:
        waiter = subprocess.Popen(
            [sys.executable, "-m", "infra.rehearsal", "down"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting for the holder
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert f"waiting for pid {holder.pid} (up)" in out
    assert_clean(state_dir)


def test_failed_boot_is_rolled_back(state_dir, env) -> None:
    # Too short for the host to boot: everything made up to then must go again.
    env["PLINTH_REHEARSAL_BOOT_TIMEOUT"] = "0"
    result = cli("up", env=env)
    assert_one_line_error(result, "did not answer within 0s")
    assert "removing what it made" in result.stdout
    assert_clean(state_dir)


# -- real boots --------------------------------------------------------------------------------


def _up_and_check(state_dir: Path, env: dict[str, str], release: str) -> dict:
    result = cli("up", "--release", release, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""

    host = json.loads((state_dir / "host.json").read_text())
    assert host["address"] == ADDRESS and host["gateway"] == GATEWAY
    assert host["release"] == release and host["name"] == NAME
    assert host["domain"] == "plinth.rehearsal.test"
    assert host["ssh_user"] == "root"
    assert host["acme_directory"] == f"https://{GATEWAY}:14000/dir"
    for key in ("ssh_key", "acme_ca_bundle", "acme_root"):
        assert Path(host[key]).is_absolute() and Path(host[key]).is_file(), key
    assert "BEGIN CERTIFICATE" in Path(host["acme_root"]).read_text()
    config = (state_dir / "ssh_config").read_text()
    assert "Host rehearsal\n" in config and f"HostName {ADDRESS}\n" in config

    status = cli("status", env=env)
    assert status.returncode == 0, status.stdout
    assert "systemd:   running" in status.stdout

    remote = ssh(state_dir, "systemctl", "is-system-running")
    assert remote.stdout.strip() == "running", remote.stdout + remote.stderr
    assert ssh(state_dir, "cat", "/etc/os-release").stdout.count(release) >= 1
    assert ssh(state_dir, "sudo", "-n", "true").returncode == 0  # hostname resolves

    # The host reaches pebble's directory over HTTPS with the listener CA from host.json.
    (state_dir / "rootfs" / "root" / "pebble-ca.pem").write_text(
        Path(host["acme_ca_bundle"]).read_text()
    )
    probe = (
        "import json, ssl, urllib.request;"
        "c = ssl.create_default_context(cafile='/root/pebble-ca.pem');"
        f"print(json.load(urllib.request.urlopen('{host['acme_directory']}', context=c))"
        "['newOrder'])"
    )
    fetched = ssh(state_dir, "python3", "-c", f'"{probe}"')
    assert fetched.stdout.strip().endswith("/order-plz"), fetched.stderr

    info = cli("info", env=env)
    assert info.returncode == 0
    assert "ssh -F " in info.stdout and " rehearsal" in info.stdout
    assert (
        f"curl --cacert {state_dir}/acme-root.pem --resolve plinth.rehearsal.test:443:{ADDRESS}"
        " https://plinth.rehearsal.test/readyz" in info.stdout
    )
    return host


def _down_and_check(state_dir: Path, env: dict[str, str]) -> None:
    result = cli("down", env=env)
    assert result.returncode == 0, result.stderr
    assert_clean(state_dir)
    again = cli("down", env=env)  # idempotent
    assert again.returncode == 0 and "no rehearsal to remove" in again.stdout
    assert cli("status", env=env).returncode == 3
    assert cli("info", env=env).returncode == 3


def test_bookworm_up_status_ssh_down(state_dir, env) -> None:
    # Two `up`s at the same moment: one boots, the other waits on the lock, then finds the
    # host running and succeeds without touching it.
    second = subprocess.Popen(
        [sys.executable, "-m", "infra.rehearsal", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _up_and_check(state_dir, env, "bookworm")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    pid = json.loads((state_dir / "state.json").read_text())["nspawn_pid"]

    # A re-run is a no-op that keeps the host (same nspawn) and pebble's root.
    root = (state_dir / "acme-root.pem").read_text()
    again = cli("up", env=env)
    assert again.returncode == 0 and "already running" in again.stdout
    assert json.loads((state_dir / "state.json").read_text())["nspawn_pid"] == pid
    assert (state_dir / "acme-root.pem").read_text() == root

    # Another release while one runs: one line telling to run down first.
    assert_one_line_error(cli("up", "--release", "trixie", env=env), "run `python -m infra")

    # An app-only release (`make release-*`) refuses a host the whole deploy never set up.
    release = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "infra/inventories/rehearsal.py",
         "infra/deploys/release.py"],
        cwd=REPO,
        env={**env, "PLINTH_REHEARSAL_HOST_JSON": str(state_dir / "host.json")},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert release.returncode != 0
    assert "is not provisioned" in release.stderr and "run the whole deploy first" in (
        release.stderr
    ), release.stderr[-1500:]

    _down_and_check(state_dir, env)


def test_trixie_up_status_ssh_down(state_dir, env) -> None:
    _up_and_check(state_dir, env, "trixie")
    _down_and_check(state_dir, env)


def test_up_after_the_host_died_cleans_up_and_boots_again(state_dir, env) -> None:
    assert cli("up", env=env).returncode == 0
    state = json.loads((state_dir / "state.json").read_text())
    os.kill(state["nspawn_pid"], signal.SIGKILL)  # nspawn gone without any teardown...
    time.sleep(0.5)
    assert cli("status", env=env).returncode == 3
    # ...and its container orphaned, still running: the next `up` must end it too.
    assert start_time(state["init_pid"]) == state["init_started"]
    result = cli("up", env=env)
    assert result.returncode == 0, result.stderr
    assert "no longer running" in result.stdout
    assert start_time(state["init_pid"]) != state["init_started"]
    assert ssh(state_dir, "systemctl", "is-system-running").stdout.strip() == "running"
    _down_and_check(state_dir, env)


def test_reboot_inside_the_host_brings_it_back_and_down_leaves_nothing(state_dir, env) -> None:
    # A reboot ends nspawn (exit status 133); the tool's supervisor starts it again on the same
    # root filesystem and re-applies the gateway address and NAT for the new veth.
    assert cli("up", env=env).returncode == 0
    before = json.loads((state_dir / "state.json").read_text())
    boot_id = ssh(state_dir, "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    assert ssh(state_dir, "sh", "-c", "'echo kept > /root/before-reboot'").returncode == 0

    ssh(state_dir, "systemctl", "reboot")  # the connection may end under it
    rebooted_at = time.monotonic()
    new_boot_id = ""
    while time.monotonic() - rebooted_at < 120:
        new_boot_id = ssh(state_dir, "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
        if new_boot_id not in ("", boot_id):
            break
        time.sleep(0.5)
    assert new_boot_id not in ("", boot_id), "the host did not come back from its reboot"
    while time.monotonic() - rebooted_at < 120:
        system = ssh(state_dir, "systemctl", "is-system-running").stdout.strip()
        if system not in ("starting", "initializing", ""):
            break
        time.sleep(0.5)
    assert system == "running", system
    print(f"\nback and running {time.monotonic() - rebooted_at:.1f} s after `systemctl reboot`")

    after = json.loads((state_dir / "state.json").read_text())
    assert after["supervisor_pid"] == before["supervisor_pid"]
    assert after["nspawn_pid"] != before["nspawn_pid"] and after["reboots"] == 1
    assert start_time(after["init_pid"]) == after["init_started"]
    assert ssh(state_dir, "cat", "/root/before-reboot").stdout.strip() == "kept"
    status = cli("status", env=env)
    assert status.returncode == 0 and "systemd:   running" in status.stdout, status.stdout
    assert GATEWAY in subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    # The host reaches pebble on the gateway again, over the re-addressed veth.
    host = json.loads((state_dir / "host.json").read_text())
    (state_dir / "rootfs" / "root" / "pebble-ca.pem").write_text(
        Path(host["acme_ca_bundle"]).read_text()
    )
    probe = (
        "import json, ssl, urllib.request;"
        "c = ssl.create_default_context(cafile='/root/pebble-ca.pem');"
        f"print(json.load(urllib.request.urlopen('{host['acme_directory']}', context=c))"
        "['newOrder'])"
    )
    fetched = ssh(state_dir, "python3", "-c", f'"{probe}"')
    assert fetched.stdout.strip().endswith("/order-plz"), fetched.stderr

    _down_and_check(state_dir, env)
