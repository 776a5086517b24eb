"""``plinth``: migrate, serve (Gunicorn in this process) and check-config."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from service import bind
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
    bind.check_socket_path(settings)  # cheap checks only: the running service holds its port
    print(f"plinth: configuration ok (environment={settings.environment})")
    return 0


def migrate() -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from service.migrations import NewerRevisionError, head_revision, upgrade

    settings = _validated_settings(with_models=False)
    try:
        upgrade(settings.sqlalchemy_url(for_migrations=True))
    except NewerRevisionError as error:
        # Not a failure: an older release deployed again after a rollback (a fix on the old
        # line) must deploy, and expand/contract keeps it compatible with the schema. It
        # changes nothing and says so.
        print(f"plinth: {error}")
        return 0
    except CommandError as error:  # any other Alembic refusal: its first line, no traceback
        return _fail(f"migration failed: {str(error).splitlines()[0]}", 1)
    except SQLAlchemyError as error:
        # The class and first line only: full messages can echo connection details.
        reason = str(getattr(error, "orig", error)).splitlines()[0]
        return _fail(f"migration failed: {type(error).__name__}: {reason}", 1)
    print(f"plinth: database at revision {head_revision()}")
    return 0


def serve() -> int:
    from gunicorn.app.base import BaseApplication

    settings = _validated_settings(with_models=True)
    # One line and exit 78 rather than Gunicorn's retries or traceback; before gunicorn_conf,
    # which makes the metrics directory that only Gunicorn's on_exit removes.
    bind.check_bindable(settings)
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
            self._started = False
            # The release file as this master found it: `current` resolved once, when the
            # master (and its code) started. A worker it starts later, after a cutover has
            # switched `current` (a respawn while the old master drains), then reports the
            # release whose code it runs, as the health check needs, not the one `current`
            # names by then. Keyed by the configured path, which a HUP may change.
            self._release_files: dict[Path, Path] = {}
            self.release_file: Path | None = None
            super().__init__(prog="plinth serve")

        def load_config(self) -> None:
            # First called by __init__ (the settings were just validated), then on every HUP:
            # re-read and check them as check-config does, models included. A bad edit must
            # not kill the running master nor the workers it is about to start: keep the
            # previous settings instead. So does a changed bind: Gunicorn would close the
            # listening sockets (systemd's, under systemd) and end when the new one failed.
            if self._started:
                try:
                    reloaded = _validated_settings(with_models=True)
                    bind.check_unchanged(self.settings, reloaded)
                except ConfigError as error:
                    logger.error("reload ignored, keeping previous settings: %s", error)
                except Exception as error:  # whatever else: the master must live on
                    logger.error(
                        "reload ignored, keeping previous settings: %s while reading them "
                        "(plinth check-config tells more)",
                        type(error).__name__,
                    )
                else:
                    self.settings = reloaded
            self._started = True
            configured = self.settings.release_info_file
            self.release_file = configured and self._release_files.setdefault(
                configured, configured.resolve()
            )
            for key, value in gunicorn_conf.options(self.settings).items():
                self.cfg.set(key, value)

        def load(self):
            # In each worker, after the fork (no preload), so a HUP builds the app afresh, from
            # the settings the master validated (inherited with its memory): a worker that read
            # the env file again would crash-loop on the bad edit the master refused.
            from service.app import app_or_exit

            pinned = {"release_info_file": self.release_file}
            return app_or_exit(self.settings.model_copy(update=pinned))

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
