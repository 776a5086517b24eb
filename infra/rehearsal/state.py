"""What a rehearsal keeps in its state directory (`.rehearsal/` by default).

`state.json` records every resource as soon as it exists, so `down` (or the rollback of a failed
`up`) can remove exactly what was made, even after a crash half-way. Only files named here are
ever removed: the state directory may be one a test or a user chose.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
HOST_FILE = "host.json"
SSH_CONFIG = "ssh_config"
SSH_KEY = "id_ed25519"
ROOTFS_DIR = "rootfs"
PEBBLE_DIR = "pebble"
PEBBLE_CA = "pebble-ca.pem"
ACME_ROOT = "acme-root.pem"
NSPAWN_PID = "nspawn.pid"  # written by the supervisor at each (re)start of nspawn
SUPERVISOR_PID = "supervisor.pid"
PEBBLE_PID = "pebble.pid"
CHALLTESTSRV_PID = "challtestsrv.pid"
LOCK_FILE = "lock"

# Everything `down` removes (the lock file last, by the lock itself).
RUNTIME_FILES = (
    STATE_FILE,
    HOST_FILE,
    SSH_CONFIG,
    SSH_KEY,
    SSH_KEY + ".pub",
    PEBBLE_CA,
    ACME_ROOT,
    NSPAWN_PID,
    SUPERVISOR_PID,
    PEBBLE_PID,
    CHALLTESTSRV_PID,
    "nspawn.log",
    "pebble.log",
    "challtestsrv.log",
    ".#rootfs.lck",  # systemd-nspawn's lock beside the image directory
)
RUNTIME_DIRS = (PEBBLE_DIR, ROOTFS_DIR)  # rootfs is unmounted by rootfs.remove() first


@dataclass
class StateDir:
    path: Path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A torn state file still means "something may be running": let down clean up.
            return {}

    def save(self, state: dict[str, Any]) -> None:
        write_file(self.path / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def update(self, **changes: Any) -> dict[str, Any]:
        state = self.load() or {}
        state.update(changes)
        self.save(state)
        return state

    def write_pid(self, name: str, pid: int) -> None:
        write_file(self.path / name, f"{pid}\n")

    def read_pid(self, name: str) -> int | None:
        try:
            return int((self.path / name).read_text().strip())
        except (OSError, ValueError):
            return None

    def remove_runtime(self) -> None:
        """Remove what `up` wrote; the cache and any foreign file in the directory stay."""
        for name in RUNTIME_DIRS:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                # rm -rf --one-file-system: fast on a 270 MB tree, and never descends into a
                # mount should one have been left under the rootfs.
                subprocess.run(
                    ["rm", "-rf", "--one-file-system", "--", str(target)],
                    check=False,
                    capture_output=True,
                )
        for name in RUNTIME_FILES:
            (self.path / name).unlink(missing_ok=True)


def write_file(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename) so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        os.fchmod(handle.fileno(), mode)  # the umask must not loosen or tighten it
    os.replace(tmp, path)
