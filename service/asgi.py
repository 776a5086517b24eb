"""``service.asgi:app``: the app built from the environment (``uvicorn service.asgi:app``).
``plinth serve``'s workers build theirs from the settings their master validated instead."""

from __future__ import annotations

from service.app import app_or_exit

app = app_or_exit()
