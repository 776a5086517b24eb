"""`account()`: pyinfra's server.user, without its cost on every deploy.

server.user reads pyinfra's Users fact, which walks every account on the host and runs
lastlog for each: ~0.4 s per call, three calls per deploy. Here a fact of the one account
(its passwd entry and groups, parsed by the Users fact's own code) decides first; server.user
runs only when that entry differs from what is wanted, with the same arguments."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Users
from pyinfra.operations import files, server


class Account(Users):
    """{user: details} like Users, for `user` alone (empty if there is no such account)."""

    def command(self, user):
        u = shlex.quote(user)
        return f'E=$(getent passwd {u}) && echo "$E|$(id -gn {u})|$(id -Gn {u})||" || true'


@operation()
def account(user: str, home: str, shell: str, group: str | None = None, **user_args):
    """The account `user` with this home, login shell and primary group (server.user's
    arguments; `ensure_home`, as there, keeps the home directory owned by the user)."""
    found = host.get_fact(Account, user=user).get(user)
    if (
        not found
        or (found["home"], found["shell"]) != (home, shell)
        or group
        not in (
            None,
            found["group"],
        )
    ):
        yield from server.user._inner(user=user, home=home, shell=shell, group=group, **user_args)
        return
    if user_args.get("ensure_home", True):  # server.user's default
        yield from files.directory._inner(
            path=home, user=user, group=group or user, _no_fail_on_link=True
        )
    else:
        host.noop(f"user {user} exists as wanted")
