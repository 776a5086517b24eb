"""JSON log lines on stdout. Kept free of heavy imports: the Gunicorn master loads it too."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from service.context import request_id_var

# uvicorn attaches an ANSI-coloured copy of its message; it is noise in JSON.
_STANDARD_RECORD_KEYS = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Hand-written (20 lines) rather than a new dependency."""

    def format(self, record: logging.LogRecord) -> str:
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
