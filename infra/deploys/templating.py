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
from collections import defaultdict
from io import StringIO
from pathlib import Path, PurePosixPath

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import files

from infra.deploys import layout

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"


class FilesIn(FactBase):
    """{directory: {name: (sha1, mode, owner, group)}} of the regular files directly in each
    of `directories` (symlinks left out); a directory that is not there maps to {}."""

    def command(self, directories):
        # A few processes per directory, not per file (/etc holds ~100 files), and one SSH
        # command for all of them.
        listing = "find . -maxdepth 1 -type f -printf 'M %m %u %g %P\\n' -exec sha1sum {} +"
        return "; ".join(
            f"echo D {shlex.quote(d)}; (cd {shlex.quote(d)} 2>/dev/null && {listing})"
            for d in directories
        )

    default = dict

    def process(self, output):
        found, stats, sums = {}, None, None
        for line in output:
            if line.startswith("D "):
                stats, sums = {}, {}
                found[line[2:]] = (stats, sums)
            elif line.startswith("M "):
                mode, user, group, name = line[2:].split(" ", 3)
                stats[name] = (int(mode, 8), user, group)
            else:  # sha1sum: "<sha1>  ./<name>"
                sha1, name = line.split("  ", 1)
                sums[name.removeprefix("./")] = sha1
        return {
            directory: {name: (sums.get(name), *stat) for name, stat in stats.items()}
            for directory, (stats, sums) in found.items()
        }


# The directories template() will write to, per host: every call is made while the deploy is
# prepared, before the first operation runs, so one FilesIn fact can cover them all.
_directories: dict[str, set[str]] = defaultdict(set)
# What this run has learned of each directory (pyinfra caches no facts between operations).
# A directory's entry is dropped when a file in it is written, so it is read again if needed.
_known: dict[tuple[str, str], dict] = {}


def _files_in(directory: str) -> dict:
    if (host.name, directory) not in _known:
        unread = sorted(
            d for d in _directories[host.name] | {directory} if (host.name, d) not in _known
        )
        found = host.get_fact(FilesIn, directories=unread)
        for d in unread:
            _known[(host.name, d)] = found.get(d, {})
    return _known[(host.name, directory)]


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
    _directories[host.name].add(str(PurePosixPath(dest).parent))
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
