"""What is running: package version plus the release file the deploy writes."""

from __future__ import annotations

import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel

UNKNOWN = "unknown"
logger = logging.getLogger("plinth.release")


class ReleaseInfo(BaseModel):
    version: str
    package_version: str
    git_revision: str
    build_time: str


def package_version() -> str:
    try:
        return version("plinth")
    except PackageNotFoundError:
        return UNKNOWN


def read_release_info(path: Path | None) -> ReleaseInfo:
    """Read once per app creation, so a HUP reload (new workers) shows the file's new content.
    Under `plinth serve` the path is the one the master resolved at its start (service/cli.py):
    a release's code reports that release, wherever `current` points by then."""
    details: dict[str, object] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
            details = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as error:
            logger.warning("release info unreadable: %s", type(error).__name__)

    def field(name: str, fallback: str = UNKNOWN) -> str:
        value = details.get(name)
        return str(value) if value not in (None, "") else fallback

    installed = package_version()
    return ReleaseInfo(
        version=field("version", installed),
        package_version=installed,
        git_revision=field("git_revision"),
        build_time=field("build_time"),
    )
