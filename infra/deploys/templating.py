"""`template()`: a file rendered from `infra/templates/` (with every `layout` name filled in)
and kept on the host with its owner and mode.

Why not files.template alone: it loads three facts per file (the file, its checksum, its
directory), one SSH command each, so ~30 templates cost ~100 commands on every deploy even
when nothing changed. Here one `FilesIn` fact describes every file of a directory at once
(checksum, mode, owner), and files.put (pyinfra's own upload, with its own checks) runs only
for a file that differs."""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO
from pathlib import Path, PurePosixPath

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import files

from infra.deploys import layout

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"


class FilesIn(FactBase):
    """{name: (sha1, mode, owner, group)} of the regular files directly in `directory`
    (symlinks left out); empty when the directory is not there."""

    def command(self, directory):
        # Two processes for the whole directory (not a few per file): /etc holds ~100 files.
        return (
            f"cd {shlex.quote(directory)} 2>/dev/null || exit 0; "
            "find . -maxdepth 1 -type f -printf 'M %m %u %g %P\\n' -exec sha1sum {} +"
        )

    default = dict

    def process(self, output):
        stats, sums = {}, {}
        for line in output:
            if line.startswith("M "):
                mode, user, group, name = line[2:].split(" ", 3)
                stats[name] = (int(mode, 8), user, group)
            else:  # sha1sum: "<sha1>  ./<name>"
                sha1, name = line.split("  ", 1)
                sums[name.removeprefix("./")] = sha1
        return {name: (sums.get(name), *stat) for name, stat in stats.items()}


# What this run has learned of each directory (pyinfra caches no facts between operations).
# A directory's entry is dropped when a file in it is written, so it is read again if needed.
_known: dict[tuple[str, str], dict] = {}


def _files_in(directory: str) -> dict:
    key = (host.name, directory)
    if key not in _known:
        _known[key] = host.get_fact(FilesIn, directory=directory)
    return _known[key]


@operation()
def _rendered_file(text: str, dest: str, mode: str, user: str, group: str):
    directory, name = str(PurePosixPath(dest).parent), PurePosixPath(dest).name
    wanted = (hashlib.sha1(text.encode()).hexdigest(), int(mode, 8), user, group)  # noqa: S324 (a checksum, as files.put's)
    if _files_in(directory).get(name) == wanted:
        host.noop(f"{dest} is up to date")
        return
    _known.pop((host.name, directory), None)
    yield from files.put._inner(src=StringIO(text), dest=dest, mode=mode, user=user, group=group)


def template(
    src: str, dest: str, *, name: str, mode: str = "644", user="root", group="root", **variables
):
    """Render `infra/templates/<src>` to `dest`; templates see every `layout` name too."""
    text = render(src, **variables)
    return _rendered_file(name=name, text=text, dest=dest, mode=mode, user=user, group=group)


def render(src: str, **variables) -> str:
    """`infra/templates/<src>` rendered to a string (for a file that must be checked on the
    host before it is installed, see hostops.validated_file)."""
    from jinja2 import StrictUndefined, Template

    source = (TEMPLATES_DIR / src).read_text()
    text = Template(source, undefined=StrictUndefined, keep_trailing_newline=True).render(
        **layout.layout_vars(), **variables
    )
    return text
