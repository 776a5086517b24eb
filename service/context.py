"""The current request's id, readable from anywhere in that request (logs, error bodies)."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("plinth_request_id", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()
