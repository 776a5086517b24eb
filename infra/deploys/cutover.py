"""Releases on the host: the deploy lock, the cutover to a release (switch `current`, re-exec
Gunicorn, health check through nginx, switch back on failure) and the facts a rollback needs.
The work is done on the host by `plinth-release` (templates/app/plinth-release.j2)."""

from __future__ import annotations

import getpass
import os
import shlex
import socket
from functools import cache

from jinja2 import Template
from pyinfra import host, logger
from pyinfra.api import DeployError, FactBase, operation
from pyinfra.facts.files import File, Link

from infra.deploys import layout
from infra.deploys.templating import TEMPLATES_DIR, template

RELEASE_TOOL = "/usr/local/sbin/plinth-release"
# root's own (0700), not /run/lock: there anyone may create files, so a local user could make
# the lock file before a deploy (after a boot empties /run) and hold it, or plant the holder's
# note that breaking the lock reads.
LOCK_DIR = f"/run/{layout.APP_NAME}-deploy"
DEPLOY_LOCK = f"{LOCK_DIR}/lock"
# Held shared by each step of a deploy that runs on the host (cutover, check, migration): a
# killed deploy's connection ends at once, but sshd does not stop those steps, so the deploy
# lock is let go only once they have ended.
WORK_LOCK = f"{LOCK_DIR}/work"
# Break a lock left by a deploy that is gone (its holder is stopped first): PLINTH_DEPLOY_LOCK=break
LOCK_ENV = "PLINTH_DEPLOY_LOCK"

RELEASE_DEFAULTS = {
    # Seconds the new release has to pass /readyz and report its /version through nginx.
    "release_health_timeout": 30,
    # Seconds the re-executed Gunicorn has to boot a worker of the new release.
    "release_start_timeout": 60,
    # Seconds a deploy waits for another deploy's lock before failing with the holder's name.
    "release_lock_wait": 0,
}


def _setting(key: str):
    return host.data.get(key, RELEASE_DEFAULTS[key])


def tool_vars() -> dict[str, object]:
    """What `plinth-release` is rendered with: the health check's address and trust anchor."""
    from infra.deploys.tls import LETSENCRYPT_DIR, SELF_SIGNED_DIR  # tls -> validate -> app

    data = host.data
    mode = data.get("tls_mode", "acme")
    name = data.get("tls_cert_name", layout.APP_NAME)
    ca = {
        "acme": f"{LETSENCRYPT_DIR}/live/{name}/chain.pem",  # the issuer as a partial chain
        "self-signed": f"{SELF_SIGNED_DIR}/self-signed.crt",
    }.get(mode, "")
    return {
        "domain": data.domain,
        "health_mode": "http" if mode == "off" else "https",
        "health_ca": ca,
        "health_timeout": _setting("release_health_timeout"),
        "start_timeout": _setting("release_start_timeout"),
        "lock_dir": LOCK_DIR,
        "lock_file": DEPLOY_LOCK,
        "work_lock": WORK_LOCK,
    }


def release_tool():
    return template(
        "app/plinth-release.j2",
        RELEASE_TOOL,
        name=f"{RELEASE_TOOL} (cutover, health check, deploy lock)",
        mode="755",
        **tool_vars(),
    )


NO_PYTHON = (
    "the host has no python3, which the deploy lock needs before anything is installed: "
    "install it first (apt-get install python3, as root), then deploy again"
)


class DeployLockTaken(FactBase):
    """Takes the deploy lock for this SSH connection (a fact, so an unchanged deploy stays
    a no-op): "ok", or the line naming who holds it."""

    def command(self, script, who, wait, mode):
        # Taken before anything is installed, so python3 must be there already (every Debian
        # cloud image has it; a minimal debootstrap has not): said so, not "python3: not found".
        return (
            "if command -v python3 >/dev/null; then "
            f"python3 -c {shlex.quote(script)} lock-acquire {shlex.quote(who)} "
            f"{float(wait)} {mode} 2>&1 || true; "
            f"else echo {shlex.quote(NO_PYTHON)}; fi"
        )

    def process(self, output):
        return [line for line in output if line.strip()] or ["ok"]


@cache
def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} (pyinfra pid {os.getpid()})"


def deploy_lock() -> None:
    """One deploy per host at a time; fails before any change, naming the holder."""
    mode = "force" if os.environ.get(LOCK_ENV) == "break" else "wait"
    source = (TEMPLATES_DIR / "app/plinth-release.j2").read_text()
    script = Template(source).render(**layout.layout_vars(), **tool_vars())
    *notes, answer = host.get_fact(
        DeployLockTaken, script=script, who=_who(), wait=_setting("release_lock_wait"), mode=mode
    )
    for note in notes:  # "broke the deploy lock held by ...": someone's deploy was stopped
        logger.warning(f"{host.print_prefix}{note}")
    if answer == NO_PYTHON:
        raise DeployError(answer)
    if answer != "ok":
        raise DeployError(f"{answer} (if that deploy is gone: {LOCK_ENV}=break)")


@operation()
def release_cutover(release_dir: str, settings_changed: bool = False):
    """`current` -> `release_dir`, live and healthy, or the deploy fails and the old serves.
    `settings_changed`: this deploy replaced the env file too, so a switch back puts the
    previous settings back with the previous release (the old release may not serve with the
    new ones)."""
    current = host.get_fact(Link, path=layout.CURRENT_LINK)
    serving = host.get_fact(ServingRelease)
    # Done only once it went live: a run stopped between the switch and the verdict left
    # `current` switched but never judged, so this one judges it (and can still go back).
    # And only when the running service is that release (or none runs: the deploy starts it
    # later): after a failed switch back, `current` names the old release while the new one
    # still serves.
    if (
        current
        and current.get("link_target") == release_dir
        and is_live(release_dir)
        and serving in (None, release_dir)
    ):
        host.noop(f"{layout.CURRENT_LINK} -> {release_dir}")
        return
    with_settings = " --with-settings" if settings_changed else ""
    yield f"{RELEASE_TOOL} cutover {shlex.quote(release_dir)}{with_settings}"


def is_live(release_dir: str) -> bool:
    """Whether the release went live: a health check passed with it (its LIVE_MARKER)."""
    return bool(host.get_fact(File, path=f"{release_dir}/{layout.LIVE_MARKER}"))


@operation()
def first_start_check(release_dir: str):
    """After the app deploy started the service for the first time (nothing was running to
    cut over from): the same health check, so a release that never serves fails the deploy
    instead of being taken for live."""
    if is_live(release_dir):  # judged already (by a cutover)
        host.noop(f"{release_dir} is live")
        return
    yield f"{RELEASE_TOOL} check"  # says so and changes nothing if a cutover judged it since


@operation(is_idempotent=False)
def checked_restart():
    """After the service unit changed: a restart, then the same health check, the release live
    or not; a failure fails the deploy in one line (the unit stays, and the next deploy
    restarts and checks it again: its record says it never passed)."""
    yield f"{RELEASE_TOOL} restart"


@operation(is_idempotent=False)
def settings_cutover():
    """After the env file changed under the same release: Gunicorn re-executed (it reads the
    file anew), health check through nginx; on failure the previous file back, re-executed and
    health-checked again, and the deploy fails naming both outcomes."""
    yield f"{RELEASE_TOOL} reload-settings"


class ServingRelease(FactBase):
    """The release dir the service's main process runs from (its venv's own interpreter is
    mapped, see installs.py), or None when it is not running."""

    def command(self):
        return (
            f"pid=$(systemctl show -p MainPID --value {layout.SERVICE_UNIT}); "
            f'[ "${{pid:-0}}" != 0 ] && grep -o -m 1 "{layout.RELEASES_DIR}/[^/]*" '
            "/proc/$pid/maps || true"
        )

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None


class ReleasesByMarker(FactBase):
    """Release dirs holding `marker`, oldest first by the marker's last change: install time
    for the installed marker, the last time it went live for the live one (touched on every
    healthy cutover)."""

    def command(self, directory, marker):
        d, m = shlex.quote(directory), shlex.quote(marker)
        return f"ls -1tr --time=ctime -d {d}/*/{m} 2>/dev/null | sed 's#/{marker}$##' || true"

    def process(self, output):
        return [line for line in output if line.strip()]


def rollback_target(named: str | None) -> str:
    """The named release, else the one that was live before the running one (as an undo: a
    release whose cutover failed its health check never went live, so is never a target)."""
    current = (host.get_fact(Link, path=layout.CURRENT_LINK) or {}).get("link_target")
    if named:
        releases = host.get_fact(
            ReleasesByMarker, directory=layout.RELEASES_DIR, marker=layout.INSTALLED_MARKER
        )
        wanted = f"{layout.RELEASES_DIR}/{named.rstrip('/').split('/')[-1]}"
        if wanted not in releases:
            names = ", ".join(r.rsplit("/", 1)[-1] for r in releases)
            raise DeployError(f"rollback: no installed release {named!r} (installed: {names})")
        return wanted
    went_live = host.get_fact(
        ReleasesByMarker, directory=layout.RELEASES_DIR, marker=layout.LIVE_MARKER
    )
    before = [release for release in went_live if release != current]
    if not before:
        raise DeployError(f"rollback: no release was live before {current}")
    return before[-1]
