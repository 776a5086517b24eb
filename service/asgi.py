"""``service.asgi:app``: the app built from the environment (what Gunicorn workers import)."""

from __future__ import annotations

import sys

from service.app import create_app
from service.config import CONFIG_ERROR_EXIT_CODE, ConfigError, load_settings
from service.predictors import ModelLoadError


def _app_from_environment():
    try:
        settings = load_settings()
        return create_app(settings)
    except ConfigError as error:
        message = str(error)
    except ModelLoadError as error:
        message = str(ConfigError("PLINTH_MODELS", f"cannot be served: {error}"))
    print(f"plinth: {message}", file=sys.stderr, flush=True)
    raise SystemExit(CONFIG_ERROR_EXIT_CODE)


app = _app_from_environment()
