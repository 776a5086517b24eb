"""`template()`: files.template with the templates directory and the layout names filled in."""

from __future__ import annotations

from pathlib import Path

from pyinfra.operations import files

from infra.deploys import layout

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"


def template(
    src: str, dest: str, *, name: str, mode: str = "644", user="root", group="root", **variables
):
    """Render `infra/templates/<src>` to `dest`; templates see every `layout` name too."""
    return files.template(
        name=name,
        src=str(TEMPLATES_DIR / src),
        dest=dest,
        mode=mode,
        user=user,
        group=group,
        **layout.layout_vars(),
        **variables,
    )


def render(src: str, **variables) -> str:
    """`infra/templates/<src>` rendered to a string (for a file that must be checked on the
    host before it is installed, see hostops.validated_file)."""
    from jinja2 import StrictUndefined, Template

    source = (TEMPLATES_DIR / src).read_text()
    text = Template(source, undefined=StrictUndefined, keep_trailing_newline=True).render(
        **layout.layout_vars(), **variables
    )
    return text
