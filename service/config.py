"""Settings from ``PLINTH_*`` environment variables (and an optional env file).

``load_settings`` turns every problem into a ``ConfigError`` that names the offending
variable, so ``plinth check-config``/``plinth serve``/the ASGI module print exactly one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

ENV_PREFIX = "PLINTH_"
ENV_FILE_VARIABLE = "PLINTH_ENV_FILE"
PACKAGED_ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
# sysexits.h EX_CONFIG: lets systemd units tell "fix the configuration" from a crash.
CONFIG_ERROR_EXIT_CODE = 78
# PostgreSQL's statement_timeout is an int4 of milliseconds.
_POSTGRESQL_INT_MAX = 2_147_483_647
# Longest sensible wait for one connection or one prediction; also keeps the values finite
# (inf passed validation, then every worker died on math.ceil(inf)).
_MAX_WAIT_SECONDS = 3600
# What Gunicorn's bind accepts that plinth supports: host:port (IPv6 in brackets), a unix
# socket path, or an inherited file descriptor. A port is required (Gunicorn would silently
# pick 8000); with systemd's socket (LISTEN_FDS) the bind is not used at all. \Z, not $: $
# let a final newline through (a quoted "\n" in the env file), into the socket's path.
_BIND = re.compile(
    r"^(?:unix:.+|fd://\d+|(?:tcp://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(?P<port>\d+))\Z"
)

# Values people paste into templates instead of a real secret.
_PLACEHOLDER = re.compile(
    r"change[-_ ]?me|placeholder|replace[-_ ]?me"
    r"|^todo$|^fixme$|^x{3,}$|^<.*>$|^\*+$|^secret$|^password$",
    re.IGNORECASE,
)
_PLACEHOLDER_ANYWHERE = re.compile(r"change[-_ ]?me|placeholder|replace[-_ ]?me", re.IGNORECASE)
# The one reason given for a URL that cannot be read as intended: it names no part of the URL,
# which is then likely to be a piece of the password.
_NOT_ENCODED = "is not a valid database URL; percent-encode special characters in the password"


class ConfigError(Exception):
    """A setting is invalid; ``str()`` is the one line printed before exiting."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"configuration error: {variable} {reason}")
        self.variable = variable


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: Literal["development", "testing", "production"] = "development"
    database_url: SecretStr | None = None
    migration_database_url: SecretStr | None = None
    models: Annotated[list[str], NoDecode] = ["iris"]
    artifacts_dir: Path = PACKAGED_ARTIFACTS_DIR
    max_batch_size: int = Field(default=64, ge=1, le=10_000)
    predict_timeout_seconds: float = Field(
        default=2.0, gt=0, le=_MAX_WAIT_SECONDS, allow_inf_nan=False
    )
    db_pool_size: int = Field(default=5, ge=1, le=1_000)
    db_max_overflow: int = Field(default=5, ge=0, le=1_000)
    db_pool_timeout_seconds: float = Field(
        default=5.0, gt=0, le=_MAX_WAIT_SECONDS, allow_inf_nan=False
    )
    db_statement_timeout_ms: int = Field(default=5_000, ge=1, le=_POSTGRESQL_INT_MAX)
    workers: int = Field(default=2, ge=1, le=256)
    bind: str = "127.0.0.1:8000"
    timeout_seconds: int = Field(default=30, ge=1, le=_MAX_WAIT_SECONDS)
    graceful_timeout_seconds: int = Field(default=30, ge=1, le=_MAX_WAIT_SECONDS)
    keepalive_seconds: int = Field(default=5, ge=1, le=_MAX_WAIT_SECONDS)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    release_info_file: Path | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul_byte(cls, value: object) -> object:
        # Only an env file can hold one (the environment cannot). C reads a string up to it:
        # libpq dropped the rest of the connection string unseen (port, user, our timeouts)
        # and connected elsewhere or without limits; a path raised a traceback.
        if isinstance(value, str) and "\0" in value:
            raise ValueError("contains a null byte (\\0)")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("models")
    @classmethod
    def _at_least_one_model(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one model")
        return value

    @field_validator("bind")
    @classmethod
    def _gunicorn_bind(cls, value: str) -> str:
        match = _BIND.match(value)
        if match is None:
            raise ValueError("must be host:port, unix:/path or fd://<descriptor number>")
        if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
            raise ValueError("must have a port between 1 and 65535")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def sqlalchemy_url(self, *, for_migrations: bool = False) -> URL:
        """The URL to connect with; migrations prefer their own (more privileged) role."""
        variable, secret = f"{ENV_PREFIX}DATABASE_URL", self.database_url
        if for_migrations and self.migration_database_url is not None:
            variable = f"{ENV_PREFIX}MIGRATION_DATABASE_URL"
            secret = self.migration_database_url
        if secret is None:
            raise ConfigError(variable, "is not set")
        return _postgresql_url(variable, secret.get_secret_value())


def _parse_url(variable: str, raw: str) -> URL:
    # SQLAlchemy is imported where a URL is parsed, not with the module: the deploy reads
    # defaults from here and should not pay a second of imports for them.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(raw)
    except (ArgumentError, ValueError):
        # Never the URL nor SQLAlchemy's message: an unencoded '@' or ':' in the password makes
        # the rest of it look like a port, and the ValueError quotes it.
        raise ConfigError(variable, _NOT_ENCODED) from None


def _postgresql_url(variable: str, raw: str) -> URL:
    url = _parse_url(variable, raw)
    # psycopg 3 is the only PostgreSQL driver installed; plain postgresql:// means "default
    # driver", which SQLAlchemy would resolve to the absent psycopg2.
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _check_database_url(variable: str, secret: SecretStr | None, *, production: bool) -> None:
    if secret is None or not secret.get_secret_value().strip():
        raise ConfigError(variable, "is not set")
    raw = secret.get_secret_value()
    url = _parse_url(variable, raw)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(variable, "must be a PostgreSQL URL (postgresql+psycopg://...)")
    if url.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(variable, "must use the psycopg driver (postgresql+psycopg://...)")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ConfigError(variable, "has a port outside 1..65535")
    # An unencoded '@' in the password: SQLAlchemy ends the password at the first one, and the
    # rest of it became the host name ('dor' of "Tr0ub@dor/..."), the database name or a
    # connection parameter, which a failed connection or the checks below would then print (in
    # the deploy's output, in the journal). Counted in the raw text, not the parsed parts: those
    # come back percent-decoded, and an encoded '%40' is fine. A second '@' anywhere, even in a
    # parameter's value, is refused: there it can be percent-encoded as well.
    if raw.partition("://")[2].count("@") > 1 or (url.host and any(c.isspace() for c in url.host)):
        raise ConfigError(variable, _NOT_ENCODED)
    from sqlalchemy.exc import ArgumentError

    try:  # what the engine will hand psycopg (host/port lists, ?port=...), without connecting
        url.set(drivername="postgresql+psycopg").get_dialect()().create_connect_args(url)
    except (ArgumentError, ValueError, TypeError):
        raise ConfigError(variable, "has connection arguments the driver refuses") from None
    # The query's parameters go to libpq as they are: a misspelt one (`sslmod`) would refuse
    # every connection at the first request. libpq's own parser knows the names (psycopg's
    # make_conninfo asks it); their values are only judged when connecting (/readyz says).
    import psycopg.conninfo

    for name in url.query:
        try:
            psycopg.conninfo.make_conninfo("", **{name: "x"})
        except psycopg.ProgrammingError:
            raise ConfigError(variable, f"has an unknown connection parameter {name!r}") from None
    if production and (
        (url.password is not None and _PLACEHOLDER.search(url.password))
        or _PLACEHOLDER_ANYWHERE.search(raw)
    ):
        raise ConfigError(variable, "contains a placeholder; set the real secret")


def _variable_for(error_location: tuple[int | str, ...]) -> str:
    field = str(error_location[0]) if error_location else "settings"
    return f"{ENV_PREFIX}{field.upper()}"


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise ``ConfigError`` naming the first bad variable."""
    for name, value in os.environ.items():
        # Upper-cased as pydantic-settings reads names (case-insensitively): plinth_bind is read.
        if name.upper().startswith(ENV_PREFIX) and not _is_utf8(value):
            # A byte that is not UTF-8 (Python keeps it as a lone surrogate) passed the checks
            # and failed later, with a traceback, wherever the value was encoded.
            raise ConfigError(name, "is not UTF-8 text")
    env_file = os.environ.get(ENV_FILE_VARIABLE)
    if env_file and not Path(env_file).is_file():
        raise ConfigError(ENV_FILE_VARIABLE, f"names a file that does not exist: {env_file}")
    try:
        settings = Settings(_env_file=env_file or None, **overrides)  # type: ignore[call-arg]
    except UnicodeDecodeError:
        raise ConfigError(
            ENV_FILE_VARIABLE, f"names a file that is not UTF-8: {env_file}"
        ) from None
    except OSError as error:  # unreadable for this user, or a read error
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            ENV_FILE_VARIABLE, f"names a file that cannot be read ({reason}): {env_file}"
        ) from None
    except ValidationError as error:
        first = error.errors(include_input=False, include_url=False)[0]
        # A validator's own message reads as a sentence without pydantic's "Value error, ".
        reason = first["msg"].removeprefix("Value error, ").lower()
        raise ConfigError(_variable_for(first["loc"]), reason) from None
    production = settings.environment == "production"
    _check_database_url(f"{ENV_PREFIX}DATABASE_URL", settings.database_url, production=production)
    if settings.migration_database_url is not None:
        _check_database_url(
            f"{ENV_PREFIX}MIGRATION_DATABASE_URL",
            settings.migration_database_url,
            production=production,
        )
    return settings
