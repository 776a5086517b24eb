"""JSON log lines on stdout. Kept free of heavy imports: the Gunicorn master loads it too.

Under systemd, stdout is the journal's stream, which knows no levels: every line would be
stored at the unit's one priority (info), so `journalctl -p warning` would find nothing, and
journald's rate limit, which keeps an allowance per priority, would drop a warning together
with the access lines of a busy minute. Each line then starts with its syslog priority as
"<N>" (sd-daemon(3)), which journald takes off and stores as the line's PRIORITY; the message
stays one JSON object. Elsewhere (a terminal, a file, a container runtime) lines are plain JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from service.context import request_id_var

# uvicorn attaches an ANSI-coloured copy of its message; it is noise in JSON.
_STANDARD_RECORD_KEYS = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}


# Python's levels as syslog priorities (syslog(3)): critical 2, error 3, warning 4, info 6,
# debug 7; a level of its own between two takes the lower one's.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    return next((priority for level, priority in _PRIORITIES if levelno >= level), 7)


def writes_to_journal(stream) -> bool:
    """Whether `stream` is the journal's stream: systemd names it in $JOURNAL_STREAM as
    "device:inode" (systemd.exec(5)), so that a process whose stdout was redirected elsewhere
    by whoever started it does not take itself for journald's."""
    wanted = os.environ.get("JOURNAL_STREAM")
    if not wanted:
        return False
    try:
        found = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's StringIO), closed
        return False
    return wanted == f"{found.st_dev}:{found.st_ino}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Hand-written (20 lines) rather than a new dependency.

    `journal`: prefix each line with its priority for journald (module docstring); by default,
    when stdout (where both of plinth's handlers write) is the journal's stream."""

    def __init__(self, *args, journal: bool | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.journal = writes_to_journal(sys.stdout) if journal is None else journal

    def format(self, record: logging.LogRecord) -> str:
        line = self._json(record)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line

    def _json(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        # Fields passed with ``extra=`` (the access log's method, route, status...).
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD_RECORD_KEYS and key != "request_id"
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Route every logger (ours, uvicorn's, SQLAlchemy's) to JSON lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Alembic announces every plugin it sets up at INFO: noise in service logs.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Our middleware writes the access line (with the route template and request id).
    logging.getLogger("uvicorn.access").disabled = True
