"""`up` and `down`: put the pieces together, record each one in state.json as it is made, and
take everything down again on failure, so a failed `up` leaves nothing half-made."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from infra.rehearsal import container, network, pebble, preflight, proc, rootfs, ssh, supervisor
from infra.rehearsal.config import DEFAULT_RELEASE, Settings
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.proc import say, warn
from infra.rehearsal.state import (
    ACME_ROOT,
    CHALLTESTSRV_PID,
    HOST_FILE,
    NSPAWN_PID,
    PEBBLE_CA,
    PEBBLE_DIR,
    PEBBLE_PID,
    ROOTFS_DIR,
    SSH_CONFIG,
    SSH_KEY,
    SUPERVISOR_PID,
    StateDir,
    write_file,
)

SSH_USER = "root"


def is_up(state: dict[str, Any] | None) -> bool:
    """Running, or rebooting: the supervisor brings nspawn back after a reboot."""
    return bool(
        state
        and state.get("phase") == "running"
        and supervisor.is_running(state.get("supervisor_pid"))
    )


def up(settings: Settings) -> dict[str, Any]:
    sd = StateDir(settings.state_dir)
    state = sd.load()
    if is_up(state):
        assert state is not None
        if settings.release and settings.release != state.get("release"):
            raise RehearsalError(
                f"a {state.get('release')} rehearsal is running; run"
                " `python -m infra.rehearsal down` before `up --release"
                f" {settings.release}`"
            )
        _ensure_pebble(sd, state)
        say(f"{state['name']} ({state['release']}) is already running: nothing to do")
        return sd.load() or state
    if state is not None:
        say("removing the remains of a rehearsal that is no longer running")
        teardown(sd, settings)

    preflight.require_tools(settings)
    preflight.require_free_subnet(settings)
    preflight.require_free_ports(settings)
    preflight.require_no_leftovers(settings, network.nft_table_exists(settings.nft_table))

    release = settings.release or DEFAULT_RELEASE
    tarball, build_seconds = rootfs.ensure_tarball(settings.rootfs_cache, release)
    try:
        return _create(sd, settings, release, tarball, build_seconds)
    except BaseException as failure:
        say("up failed: removing what it made")
        try:
            teardown(sd, settings)
        except RehearsalError as cleanup:
            # Report the cause first; the cleanup problem is secondary but must be visible.
            raise RehearsalError(f"{failure}; and cleaning up failed: {cleanup}") from None
        raise


def _create(
    sd: StateDir, settings: Settings, release: str, tarball: Path, build_seconds: float | None
) -> dict[str, Any]:
    gateway, address = str(settings.gateway), str(settings.address)
    prefixlen = settings.subnet.prefixlen
    timings: dict[str, float] = {}
    if build_seconds is not None:
        timings["rootfs_build"] = build_seconds
    sd.save(
        {
            "phase": "creating",
            "name": settings.name,
            "release": release,
            "subnet": str(settings.subnet),
            "peers": [str(peer) for peer in settings.peers],
            "gateway": gateway,
            "address": address,
            "domain": settings.domain,
            "ports": settings.ports,
            "rootfs_tarball": str(tarball),
        }
    )

    say(f"unpacking {tarball.name}")
    started = time.monotonic()
    public_key = ssh.generate_key(sd / SSH_KEY, settings.name)
    root = sd / ROOTFS_DIR
    rootfs.unpack(tarball, root, settings.tmpfs_size, settings.name)
    rootfs.personalize(
        root,
        name=settings.name,
        address=address,
        prefixlen=prefixlen,
        gateway=gateway,
        authorized_key=public_key,
    )
    timings["unpack"] = time.monotonic() - started

    say(f"booting {settings.name} ({release}) at {address}")
    boot_started = time.monotonic()
    log = sd / "nspawn.log"
    supervisor_pid = supervisor.start(sd.path, root, settings.name, log)
    sd.write_pid(SUPERVISOR_PID, supervisor_pid)
    sd.update(supervisor_pid=supervisor_pid)
    pid = supervisor.wait_for_nspawn(sd.path, supervisor_pid, log)
    sd.update(nspawn_pid=pid)
    init_pid, iface = container.wait_for_network(pid, log)
    sd.update(init_pid=init_pid, init_started=proc.start_time(init_pid), iface=iface)
    network.configure_gateway(iface, gateway, prefixlen)
    # Record the old value before changing it, so a crash in between still restores it.
    sd.update(ip_forward_old=network.read_ip_forward())
    network.enable_ip_forward()
    sd.update(nft_table=settings.nft_table)
    network.add_nat(
        settings.nft_table, str(settings.subnet), iface, [str(p) for p in settings.peers]
    )

    # Pebble starts while the host boots.
    workdir = sd / PEBBLE_DIR
    cert, key = pebble.make_listener_certs(workdir, sd / PEBBLE_CA, gateway)
    pebble.write_config(
        workdir / "pebble-config.json", gateway=gateway, ports=settings.ports, cert=cert, key=key
    )
    _start_pebble(sd, gateway, address, settings.ports)

    ssh.write_config(sd / SSH_CONFIG, address=address, user=SSH_USER, key=sd / SSH_KEY)
    system, to_ssh = ssh.wait_until_up(sd / SSH_CONFIG, pid, log, settings.boot_timeout)
    timings["boot_to_ssh"] = to_ssh
    timings["boot_to_running"] = time.monotonic() - boot_started
    if system == "degraded":
        units = ", ".join(ssh.failed_units(sd / SSH_CONFIG)) or "unknown"
        warn(f"the host's systemd is degraded; failed units: {units}")

    state = sd.load() or {}
    _await_pebble(sd, state)
    _write_host_json(sd, state)
    return sd.update(phase="running", system=system, timings=timings)


def _urls(state: dict[str, Any]) -> tuple[str, str]:
    ports = state["ports"]
    gateway = state["gateway"]
    return (
        f"https://{gateway}:{ports['pebble']}/dir",
        f"https://{gateway}:{ports['pebble_management']}",
    )


def _start_pebble(sd: StateDir, gateway: str, address: str, ports: dict[str, int]) -> None:
    challtestsrv_pid, pebble_pid = pebble.start(
        sd.path, sd / PEBBLE_DIR, gateway=gateway, address=address, ports=ports
    )
    sd.write_pid(CHALLTESTSRV_PID, challtestsrv_pid)
    sd.write_pid(PEBBLE_PID, pebble_pid)
    sd.update(challtestsrv_pid=challtestsrv_pid, pebble_pid=pebble_pid)


def _await_pebble(sd: StateDir, state: dict[str, Any]) -> None:
    directory, management = _urls(state)
    pids = {
        pebble.CHALLTESTSRV_MARKER: state["challtestsrv_pid"],
        pebble.PEBBLE_MARKER: state["pebble_pid"],
    }
    pebble.wait_ready(directory, sd / PEBBLE_CA, pids, sd.path)
    write_file(sd / ACME_ROOT, pebble.fetch_root(management, sd / PEBBLE_CA))


def _ensure_pebble(sd: StateDir, state: dict[str, Any]) -> None:
    """A re-run of `up` keeps a healthy pebble (and so its root); a dead one is restarted."""
    if pebble_running(state):
        return
    warn("pebble was not running: restarting it (its issuing root changes)")
    pebble.stop(state.get("pebble_pid"), pebble.PEBBLE_MARKER)
    pebble.stop(state.get("challtestsrv_pid"), pebble.CHALLTESTSRV_MARKER)
    _start_pebble(sd, state["gateway"], state["address"], state["ports"])
    _await_pebble(sd, sd.load() or {})


def pebble_running(state: dict[str, Any]) -> bool:
    return proc.is_running(state.get("pebble_pid"), pebble.PEBBLE_MARKER) and proc.is_running(
        state.get("challtestsrv_pid"), pebble.CHALLTESTSRV_MARKER
    )


def _write_host_json(sd: StateDir, state: dict[str, Any]) -> None:
    directory, management = _urls(state)
    host = {
        "name": state["name"],
        "address": state["address"],
        "gateway": state["gateway"],
        "domain": state["domain"],
        "release": state["release"],
        "ssh_user": SSH_USER,
        "ssh_key": str(sd / SSH_KEY),
        "ssh_config": str(sd / SSH_CONFIG),
        "acme_directory": directory,
        "acme_ca_bundle": str(sd / PEBBLE_CA),
        "acme_root": str(sd / ACME_ROOT),
        "acme_management": management,
        "acme_email": f"ops@{state['domain']}",
    }
    write_file(sd / HOST_FILE, json.dumps(host, indent=2) + "\n")


def down(settings: Settings) -> bool:
    """Stop and remove everything; True if there was something to remove."""
    sd = StateDir(settings.state_dir)
    state = sd.load()
    leftover_table = state is None and network.nft_table_exists(settings.nft_table)
    if state is None and not leftover_table:
        return False
    teardown(sd, settings)
    return True


def teardown(sd: StateDir, settings: Settings) -> None:
    """Best effort and idempotent: every step runs even if an earlier one failed; the first
    error is raised at the end so `down` never stops half-way."""
    state = sd.load() or {}
    errors: list[str] = []

    def step(action, *args) -> None:
        try:
            action(*args)
        except (RehearsalError, OSError) as exc:
            errors.append(str(exc))

    step(pebble.stop, sd.read_pid(PEBBLE_PID) or state.get("pebble_pid"), pebble.PEBBLE_MARKER)
    step(
        pebble.stop,
        sd.read_pid(CHALLTESTSRV_PID) or state.get("challtestsrv_pid"),
        pebble.CHALLTESTSRV_MARKER,
    )
    supervisor_pid = sd.read_pid(SUPERVISOR_PID) or state.get("supervisor_pid")
    step(supervisor.stop, supervisor_pid)  # it stops its nspawn first
    # Read after the supervisor stopped: it may have restarted nspawn for a reboot. Stopped
    # here too in case the supervisor had died without it.
    nspawn_pid = sd.read_pid(NSPAWN_PID) or state.get("nspawn_pid")
    step(container.stop, nspawn_pid)
    step(container.kill_orphan, state.get("init_pid"), state.get("init_started"))
    if supervisor.is_running(supervisor_pid) or container.is_running(nspawn_pid):
        # Never delete a rootfs a container still runs from.
        raise RehearsalError(
            f"systemd-nspawn (pid {nspawn_pid}, supervisor {supervisor_pid}) did not stop;"
            " not removing its root filesystem"
        )
    step(network.remove_link, state.get("iface"))
    step(network.delete_nat, state.get("nft_table") or settings.nft_table)
    step(network.restore_ip_forward, state.get("ip_forward_old"))
    step(rootfs.remove, sd / ROOTFS_DIR)
    step(sd.remove_runtime)
    if errors:
        raise RehearsalError(f"down was incomplete: {errors[0]}")
