"""Run groups of make targets side by side, fail fast, and say which one failed.

    python scripts/parallel_make.py "test-service test-infra-trixie" "test-infra-bookworm"

Each argument is a lane: its targets run one after another; the lanes run at the same time.
Every line a lane prints is shown prefixed with the lane's first target, and the whole of it is
kept in .cache/test-logs/lane<N>-<target>.log. When a lane fails, the others get SIGINT (so
pytest runs its teardown, which takes down the rehearsal hosts it booted), then the failed
lane's tail is printed again and the exit status is non-zero.

Why not `make -j`: make waits for running jobs after a failure instead of stopping them, which
would let a 15-minute lane run on after a 1-minute failure, and it interleaves partial lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_DIR = REPO / ".cache" / "test-logs"
STOP_GRACE_S = 120  # pytest's teardown takes a rehearsal host down in a few seconds
TAIL_LINES = 60
_print_lock = threading.Lock()


class Lane:
    def __init__(self, number: int, targets: list[str]) -> None:
        self.targets = targets
        self.name = targets[0]
        self.log_path = LOG_DIR / f"lane{number}-{self.name}.log"
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.failed_target: str | None = None
        self.seconds = 0.0
        self.stopping = False
        self.completed = 0

    def run(self) -> None:
        started = time.monotonic()
        with self.log_path.open("w") as log:
            for target in self.targets:
                if self.stopping:
                    break
                self.process = subprocess.Popen(
                    ["make", "--no-print-directory", target],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # its own process group, to signal it as a whole
                )
                for line in self.process.stdout:
                    log.write(line)
                    log.flush()
                    with _print_lock:
                        print(f"[{self.name}] {line}", end="", flush=True)
                self.returncode = self.process.wait()
                if self.returncode != 0:
                    if not self.stopping:
                        self.failed_target = target
                    break
                self.completed += 1
        self.seconds = time.monotonic() - started

    def interrupt(self) -> None:
        self.stopping = True
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    lanes = [Lane(number, arg.split()) for number, arg in enumerate(argv, 1)]
    threads = [threading.Thread(target=lane.run, daemon=True) for lane in lanes]
    for thread in threads:
        thread.start()
    failed: Lane | None = None
    while any(thread.is_alive() for thread in threads):
        failed = failed or next((lane for lane in lanes if lane.failed_target), None)
        if failed:
            for lane in lanes:
                lane.interrupt()
            deadline = time.monotonic() + STOP_GRACE_S
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            break
        time.sleep(0.5)
    failed = failed or next((lane for lane in lanes if lane.failed_target), None)
    print("\nlanes:")
    for lane in lanes:
        status = "ok" if lane.completed == len(lane.targets) else "stopped"
        if lane.failed_target:
            status = f"FAILED in `make {lane.failed_target}`"
        print(f"  {lane.name:<24} {lane.seconds / 60:5.1f} min  {status}")
    if failed:
        tail = failed.log_path.read_text().splitlines()[-TAIL_LINES:]
        print(f"\n--- last {len(tail)} lines of {failed.log_path.relative_to(REPO)} ---")
        print("\n".join(tail))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
