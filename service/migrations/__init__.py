"""Alembic migrations shipped inside the package, driven programmatically (no alembic.ini).

The URL travels in ``Config.attributes`` rather than as an ini option: ini interpolation
would mangle ``%`` in passwords, and nothing is written to disk.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

# Alembic's default name, written out once: the deploy's grants (infra/deploys/database_roles)
# treat this table differently from the data tables.
VERSION_TABLE = "alembic_version"


def alembic_config(url: URL | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "service:migrations")
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(url: URL, revision: str = "head") -> None:
    """Apply migrations; idempotent (at head it does nothing)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
