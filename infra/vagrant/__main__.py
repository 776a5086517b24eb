"""`python -m infra.vagrant box | net up|down | sandbox -- CMD...` (see infra/vagrant/README.md).

Failures print one line on stderr (`vagrant: error: ...`) and exit 1; progress goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infra.rehearsal.config import RELEASES
from infra.rehearsal.errors import RehearsalError
from infra.vagrant import box, sandbox


def say(message: str) -> None:
    print(f"vagrant: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.vagrant", description=__doc__)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("PLINTH_VAGRANT_CACHE_DIR", box.DEFAULT_CACHE_DIR)),
        help="root filesystem and box files (default: <repo>/.cache/vagrant)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("box", help="build the vagrant-lxc box and `vagrant box add` it")
    build.add_argument("--release", choices=RELEASES, default="bookworm")
    build.add_argument("--no-add", action="store_true", help="build the box file only")
    net = commands.add_parser("net", help="start/stop lxc-net (hosts without systemd)")
    net.add_argument("action", choices=("up", "down"))
    run = commands.add_parser(
        "sandbox",
        help="run a command with Vagrant and LXC state in "
        "<cache-dir>/sandbox (root; see the module's doc)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except RehearsalError as error:
        print(f"vagrant: error: {error}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    lab = sandbox.Sandbox(args.cache_dir / "sandbox")
    if os.geteuid() != 0:
        raise RehearsalError("must run as root (mmdebstrap, lxc-net, mount namespaces): try sudo")
    if args.command == "box":
        sandbox.require_tools()
        path, seconds = box.ensure_box(args.cache_dir, args.release)
        say(f"box {path}" + (f" built in {seconds:.0f}s" if seconds is not None else " (cached)"))
        if not args.no_add:
            box.add_box(path, args.release)
            say(f"added as {box.box_name(args.release)}")
        return 0
    if args.command == "net":
        if args.action == "up":
            started = lab.net_up()
            say(f"lxc-net {'started' if started else 'already up: left alone'} ({sandbox.BRIDGE})")
        else:
            lab.net_down()
            say("lxc-net stopped if this tool had started it")
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise RehearsalError("sandbox: no command given (python -m infra.vagrant sandbox -- CMD)")
    lab.prepare()
    return lab.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
