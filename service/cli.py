"""``plinth``: migrate, serve (Gunicorn in this process) and check-config."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from service.config import CONFIG_ERROR_EXIT_CODE, ConfigError, Settings, load_settings

logger = logging.getLogger("plinth.cli")


def _fail(message: str, code: int) -> int:
    print(f"plinth: {message}", file=sys.stderr, flush=True)
    return code


def _validated_settings(*, with_models: bool) -> Settings:
    """Settings plus (optionally) every configured model, or ``ConfigError``."""
    settings = load_settings()
    if with_models:
        from service.predictors import ModelLoadError, load_models

        try:
            load_models(settings.artifacts_dir, settings.models)
        except ModelLoadError as error:
            raise ConfigError("PLINTH_MODELS", f"cannot be served: {error}") from None
    return settings


def check_config() -> int:
    settings = _validated_settings(with_models=True)
    print(f"plinth: configuration ok (environment={settings.environment})")
    return 0


def migrate() -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from service.migrations import head_revision, upgrade

    settings = _validated_settings(with_models=False)
    try:
        upgrade(settings.sqlalchemy_url(for_migrations=True))
    except SQLAlchemyError as error:
        # The class and first line only: full messages can echo connection details.
        reason = str(getattr(error, "orig", error)).splitlines()[0]
        return _fail(f"migration failed: {type(error).__name__}: {reason}", 1)
    print(f"plinth: database at revision {head_revision()}")
    return 0


def serve() -> int:
    from gunicorn.app.base import BaseApplication
    from gunicorn.util import import_app

    settings = _validated_settings(with_models=True)
    from service import gunicorn_conf  # exports PROMETHEUS_MULTIPROC_DIR before any fork

    # Workers fork with the app's libraries (FastAPI, SQLAlchemy, Alembic...) already imported
    # by the master, so a worker boots in a fraction of a second instead of importing them again
    # (seconds on a busy host): what decides how soon a restarted service serves again. The app
    # is still built in each worker (`load` below), so a HUP applies changed settings; new code
    # arrives only by a re-exec (USR2), which imports afresh. After gunicorn_conf, by design.
    importlib.import_module("service.app")
    importlib.import_module("alembic.script")  # service.migrations imports it only when used

    class PlinthGunicorn(BaseApplication):
        """Gunicorn's arbiter in this process: ``kill -HUP $MAINPID`` reaches it directly."""

        def __init__(self) -> None:
            self.settings = settings
            super().__init__(prog="plinth serve")

        def load_config(self) -> None:
            # Called again on HUP: pick up changed settings, but never let a bad edit
            # kill a running master; keep the previous settings instead.
            try:
                self.settings = load_settings()
            except ConfigError as error:
                logger.error("reload ignored, keeping previous settings: %s", error)
            for key, value in gunicorn_conf.options(self.settings).items():
                self.cfg.set(key, value)

        def load(self):
            # Imported in each worker (no preload), so a HUP builds the app afresh.
            return import_app("service.asgi:app")

    PlinthGunicorn().run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plinth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply database migrations up to head (idempotent)")
    commands.add_parser("serve", help="serve with Gunicorn (systemd socket or PLINTH_BIND)")
    commands.add_parser("check-config", help="validate settings and model artifacts")
    arguments = parser.parse_args(argv)
    handlers = {"migrate": migrate, "serve": serve, "check-config": check_config}
    try:
        return handlers[arguments.command]()
    except ConfigError as error:
        return _fail(str(error), CONFIG_ERROR_EXIT_CODE)


if __name__ == "__main__":
    sys.exit(main())
