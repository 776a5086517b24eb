"""``PLINTH_BIND`` checks that Gunicorn does not make before it is too late.

Gunicorn binds when its master starts (a port in use: five seconds of retries, ten log lines,
exit 1; a unix path that is a regular file: a traceback) and again on a HUP when the bind
changed, after closing the sockets it had: a failure there ended the master. Here:

- ``check_socket_path``: cheap checks, also for ``plinth check-config`` (which runs beside a
  service that holds its port, so it binds nothing);
- ``check_bindable``: at ``plinth serve``, a trial bind, refused in one line;
- ``check_unchanged``: on a reload, a changed bind is refused (it needs a restart).

No side effects at import: ``check-config`` uses it (``service.gunicorn_conf`` does have some).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from service.config import ConfigError, Settings

VARIABLE = "PLINTH_BIND"


def _address(bind: str) -> str | int | tuple[str, int]:
    """What Gunicorn makes of it: a unix path, a descriptor number or (host, port)."""
    from gunicorn.util import parse_address

    return parse_address(bind)


def check_socket_path(settings: Settings) -> None:
    """A ``unix:`` bind Gunicorn cannot take: a path that exists and is not a socket (it
    replaces a socket only), or a socket in a directory that does not exist."""
    address = _address(settings.bind)
    if not isinstance(address, str) or address.startswith("\0"):  # not a path (abstract)
        return
    path = Path(address)
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if not path.parent.is_dir():
            raise ConfigError(
                VARIABLE, f"names a socket in a directory that does not exist: {path.parent}"
            ) from None
        return
    except OSError:  # e.g. not ours to examine: check-config may run as another user
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise ConfigError(VARIABLE, f"names {path}, which is not a socket")


def _listeners_inherited() -> bool:
    """Gunicorn binds nothing when it adopts systemd's sockets (``LISTEN_FDS`` for this PID)
    or, in a master re-executed by USR2, its parent's (``GUNICORN_FD``): the bind may then
    name an address the running service holds."""
    from gunicorn import systemd

    return systemd.listen_fds(unset_environment=False) > 0 or "GUNICORN_FD" in os.environ


def check_bindable(settings: Settings) -> None:
    """At ``plinth serve``, before Gunicorn starts: bind the address once (and let it go),
    so that one that cannot be bound is one line and the configuration-error exit code."""
    if _listeners_inherited():
        return
    check_socket_path(settings)
    address = _address(settings.bind)
    if isinstance(address, int):
        try:
            is_socket = stat.S_ISSOCK(os.fstat(address).st_mode)
        except (OSError, OverflowError):  # not open; or past a C int, so never a descriptor
            is_socket = False
        if not is_socket:
            raise ConfigError(
                VARIABLE, f"names a descriptor that is not an open socket: {settings.bind}"
            )
        return
    try:
        if isinstance(address, str):
            if address.startswith("\0") or os.path.exists(address):
                return  # abstract, or a socket left by a previous run: Gunicorn replaces it
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as trial:
                trial.bind(address)
            os.unlink(address)
            return
        from gunicorn.util import is_ipv6

        family = socket.AF_INET6 if is_ipv6(address[0]) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as trial:
            # As Gunicorn does: a previous run's connections in TIME_WAIT do not stop it.
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            trial.bind(address)
    except OSError as error:  # socket.gaierror included (a host name that does not resolve)
        reason = error.strerror or type(error).__name__
        raise ConfigError(VARIABLE, f"cannot be bound: {reason} ({settings.bind})") from None
    except (UnicodeError, TypeError):  # the socket module's "encoding of hostname failed"
        raise ConfigError(
            VARIABLE, f"cannot be bound: its host name cannot be encoded ({settings.bind!r})"
        ) from None


def check_unchanged(running: Settings, new: Settings) -> None:
    """On a reload (HUP): Gunicorn would close its listening sockets and bind the new address,
    and end the master when that fails. Under systemd the socket is systemd's, so a reload
    could never move it anyway: the running socket stays, a changed bind needs a restart."""
    if _address(new.bind) != _address(running.bind):
        raise ConfigError(
            VARIABLE,
            f"changed from {running.bind} to {new.bind}; a reload keeps the listening socket, "
            "a changed bind needs a restart",
        )
