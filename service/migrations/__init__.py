"""Alembic migrations shipped inside the package, driven programmatically (no alembic.ini).

The URL travels in ``Config.attributes`` rather than as an ini option: ini interpolation
would mangle ``%`` in passwords, and nothing is written to disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import URL

# Alembic's default name, written out once: the deploy's grants (infra/deploys/database_roles)
# treat this table differently from the data tables. (Alembic itself is imported inside the
# functions, so reading this name costs the deploy nothing.)
VERSION_TABLE = "alembic_version"


def alembic_config(url: URL | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "service:migrations")
    if url is not None:
        config.attributes["url"] = url
    return config


class NewerRevisionError(Exception):
    """The database is at a revision this release's migrations do not know: a newer release
    migrated it (expand/contract) and this one was rolled back to, or is deployed again.
    Nothing to do here, and nothing that may be done: only that newer release's migrations
    know the way. Expand/contract keeps this release working on that schema."""

    def __init__(self, current: str, head: str | None) -> None:
        super().__init__(
            f"the database is at revision {current}, ahead of this release (its head is "
            f"{head}): a newer release migrated it; nothing to migrate"
        )


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision this release's migrations can name (its head and all before it)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


def upgrade(url: URL, revision: str = "head") -> None:
    """Apply migrations; idempotent (at head it does nothing). Raises ``NewerRevisionError``,
    changing nothing, when the database is ahead of this release."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
