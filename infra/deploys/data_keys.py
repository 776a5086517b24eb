"""Every inventory data key plinth reads: the union of the deploys' data_defaults, where each
is documented. validate.py refuses any other key, which is most likely a typo: pyinfra would
ignore it in silence, and the deploy would use the default the user meant to change."""

from __future__ import annotations

import difflib
import importlib

# The deploy modules with data: each holds its keys in `<NAME>_DEFAULTS` dicts.
DEPLOYS = tuple(
    importlib.import_module(f"infra.deploys.{name}")
    for name in ("access", "app", "backups", "base", "cutover", "firewall", "logcaps", "nginx",
                 "os_hardening", "postgres", "tls")
)  # fmt: skip
KNOWN_KEYS = frozenset(
    key
    for module in DEPLOYS
    for name, value in vars(module).items()
    if name.endswith("_DEFAULTS") and isinstance(value, dict)
    for key in value
)
# pyinfra's own: operation arguments (`_sudo`, `_temp_dir`) and its SSH connector's keys.
PYINFRA_PREFIXES = ("_", "ssh_")


def unknown_keys(data: dict) -> list[str]:
    """Keys of `data` no deploy reads, each with the known key it most resembles."""
    unknown = []
    for key in sorted(data):
        if key in KNOWN_KEYS or key.startswith(PYINFRA_PREFIXES):
            continue
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        unknown.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return unknown


def documented_keys() -> list[tuple[str, str, str, str]]:
    """(key, module, default, comment) of every key, read from the deploy modules' source:
    the comment is the `#` lines right above the key in its data_defaults literal."""
    import ast
    import inspect

    rows = []
    for module in DEPLOYS:
        name = module.__name__.rsplit(".", 1)[-1]
        source = inspect.getsource(module)
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Dict):
                continue
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if not targets or not targets[0].endswith("_DEFAULTS"):
                continue
            values, shared = getattr(module, targets[0]), ""
            for key_node in node.value.keys:
                if not isinstance(key_node, ast.Constant):  # a `**OTHER_DEFAULTS` spread
                    continue
                comment, above = [], key_node.lineno - 2
                while above >= 0 and lines[above].strip().startswith("#"):
                    comment.insert(0, lines[above].strip().lstrip("#").strip())
                    above -= 1
                # A key right under another, with no comment of its own, shares that one's.
                text = " ".join(comment) or (shared if lines[above].strip() else "")
                shared = text
                key = key_node.value
                rows.append((key, f"{name}.py", repr(values[key]), text))
    return rows


if __name__ == "__main__":  # `make data-keys`: every key, its deploy, default and meaning
    for key, module, default, comment in documented_keys():
        print(f"{key}  ({module}, default {default})\n    {comment or '(undocumented)'}")
