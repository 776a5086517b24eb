"""One `up` or `down` at a time per state directory: an flock on `<state>/lock`.

The holder writes its PID into the file so a waiter that gives up can name it. `down` deletes the
lock file while holding it; a waiter that then acquires the old, unlinked inode notices (the path
no longer points at the inode it locked) and retries on the new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from infra.rehearsal.errors import RehearsalError
from infra.rehearsal.state import LOCK_FILE, RUNTIME_DIRS, RUNTIME_FILES


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    return f"pid {pid} ({command})" if pid else "an unknown process"


@contextlib.contextmanager
def state_lock(state_dir: Path, timeout: float, command: str) -> Iterator[None]:
    path = state_dir / LOCK_FILE
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        # (Re)made each round: a `down` finishing meanwhile removes the directory it emptied.
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise RehearsalError(
                    f"another rehearsal up/down is running: {_holder(path)} holds {path};"
                    f" gave up after {timeout:g}s"
                ) from None
            if not announced:
                print(f"rehearsal: waiting for {_holder(path)} to release {path}", flush=True)
                announced = True
            time.sleep(0.2)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file `down` has just deleted: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        yield
    finally:
        # Drop the lock file (and the directory, when empty) once no rehearsal state remains:
        # a failed or finished command leaves nothing behind. Unlink before unlocking so a
        # waiter retries on a fresh file rather than trusting a deleted one.
        leftovers = [p for p in state_dir.iterdir() if p.name != LOCK_FILE]
        if not any(p.name in RUNTIME_FILES or p.name in RUNTIME_DIRS for p in leftovers):
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                state_dir.rmdir()  # only succeeds when empty; foreign files keep it
        os.close(fd)
