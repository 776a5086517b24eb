"""Command line: `python -m infra.rehearsal up|down|status|info [options]`.

Progress goes to stdout; a failure is exactly one line on stderr (`rehearsal: error: ...`) and a
non-zero exit status, never a traceback (PLINTH_REHEARSAL_DEBUG=1 shows one for a bug).
Exit status: 0 ok, 1 error, 3 (status/info) no rehearsal running, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from infra.deploys.layout import DEPLOY_USER
from infra.rehearsal import lifecycle, preflight, proc, ssh
from infra.rehearsal.config import RELEASES, Settings, load_settings
from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.lock import state_lock
from infra.rehearsal.state import ACME_ROOT, SSH_CONFIG, StateDir

NOT_RUNNING = 3


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", help="where runtime state lives (PLINTH_REHEARSAL_DIR; .rehearsal/)"
    )
    common.add_argument(
        "--cache-dir", help="cache root; rootfs tarballs go in its rootfs/ (PLINTH_CACHE_DIR)"
    )
    common.add_argument("--name", help="machine name (PLINTH_REHEARSAL_NAME; plinth-rehearsal)")
    common.add_argument(
        "--subnet", help="private /24-ish subnet (PLINTH_REHEARSAL_SUBNET; 10.213.0.0/24)"
    )
    common.add_argument(
        "--lock-timeout",
        help="seconds to wait for another up/down (PLINTH_REHEARSAL_LOCK_TIMEOUT; 60)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m infra.rehearsal",
        description="Boot, inspect and remove plinth's local rehearsal host.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", parents=[common], help="boot the rehearsal host (idempotent)")
    up.add_argument(
        "--release",
        choices=RELEASES,
        help="Debian release (PLINTH_REHEARSAL_RELEASE; bookworm)",
    )
    up.add_argument(
        "--domain", help="domain the host serves (PLINTH_REHEARSAL_DOMAIN; plinth.rehearsal.test)"
    )
    commands.add_parser("down", parents=[common], help="stop and remove it (idempotent)")
    commands.add_parser("status", parents=[common], help="is it running? (exit 3 if not)")
    commands.add_parser("info", parents=[common], help="how to reach it: URLs, ssh, curl")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        preflight.ensure_sbin_on_path()
        settings = load_settings(
            state_dir=args.state_dir,
            cache_dir=args.cache_dir,
            name=args.name,
            subnet=args.subnet,
            domain=getattr(args, "domain", None),
            release=getattr(args, "release", None),
            lock_timeout=args.lock_timeout,
        )
        return COMMANDS[args.command](settings)
    except RehearsalError as exc:
        print(f"rehearsal: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rehearsal: error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("PLINTH_REHEARSAL_DEBUG"):
            traceback.print_exc()
        detail = " ".join(str(exc).split())
        print(
            f"rehearsal: error: unexpected {type(exc).__name__}: {detail}"
            " (PLINTH_REHEARSAL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
            flush=True,
        )
        return 1


def cmd_up(settings: Settings) -> int:
    preflight.require_root()
    with state_lock(settings.state_dir, settings.lock_timeout, "up"):
        state = lifecycle.up(settings)
    _print_info(settings.state_dir, state)
    return 0


def cmd_down(settings: Settings) -> int:
    preflight.require_root()
    with state_lock(settings.state_dir, settings.lock_timeout, "down"):
        removed = lifecycle.down(settings)
    proc.say("rehearsal host removed" if removed else "no rehearsal to remove")
    return 0


def cmd_status(settings: Settings) -> int:
    state = StateDir(settings.state_dir).load()
    if not state:
        print("rehearsal: not running")
        return NOT_RUNNING
    running = lifecycle.is_up(state)
    pebble_ok = lifecycle.pebble_running(state)
    system = ssh.system_state(settings.state_dir / SSH_CONFIG) if running else None
    print(f"name:      {state.get('name')}")
    print(f"release:   {state.get('release')}")
    print(f"address:   {state.get('address')} (gateway {state.get('gateway')})")
    pids = f"nspawn pid {state.get('nspawn_pid')}, supervisor {state.get('supervisor_pid')}"
    reboots = f", rebooted {state['reboots']}x" if state.get("reboots") else ""
    print(f"container: {'running' if running else 'stopped'} ({pids}{reboots})")
    print(f"systemd:   {system or 'unreachable'}")
    print(f"pebble:    {'running' if pebble_ok else 'stopped'}")
    if not running:
        return NOT_RUNNING
    return 0 if pebble_ok and system in ("running", "degraded") else 1


def cmd_info(settings: Settings) -> int:
    state = StateDir(settings.state_dir).load()
    if not lifecycle.is_up(state):
        raise RehearsalError(
            "no rehearsal is running (start one with `python -m infra.rehearsal up`)",
            exit_code=NOT_RUNNING,
        )
    _print_info(settings.state_dir, state or {})
    return 0


def _shown(path: Path) -> str:
    """Paths relative to the working directory when below it: shorter lines to copy."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_info(state_dir: Path, state: dict[str, Any]) -> None:
    address, domain = state["address"], state["domain"]
    config = _shown(state_dir / SSH_CONFIG)
    root = _shown(state_dir / ACME_ROOT)
    print(f"Rehearsal host {state['name']} (Debian {state['release']}) is up at {address}")
    print(
        f"  URL:   https://{domain}/  (the name resolves only via --resolve; also http://{address}/)"
    )
    # A deployed host lets only the deploy user in (docs/contracts.md); root only before.
    print(f"  ssh:   ssh -F {config} -l {DEPLOY_USER} rehearsal")
    print(f"  curl:  curl --cacert {root} --resolve {domain}:443:{address} https://{domain}/readyz")
    print(f"  data:  {_shown(state_dir / 'host.json')}")
    timings = state.get("timings")
    if timings:
        print("  boot:  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "info": cmd_info}
