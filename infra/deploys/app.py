"""The service: a release artifact built on the control machine, installed into an immutable
per-release virtualenv, migrations, then an atomic `current` switch and a graceful reload.
Gunicorn runs under systemd, socket-activated on a unix socket only nginx can connect to."""

from __future__ import annotations

from functools import cache

from pyinfra import host
from pyinfra.api import DeployError, deploy
from pyinfra.facts.files import File, Link
from pyinfra.facts.server import Arch, LinuxDistribution
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from infra.deploys import layout
from infra.deploys.cutover import (
    RELEASE_DEFAULTS,
    ServingRelease,
    checked_restart,
    first_start_check,
    release_cutover,
    release_tool,
    settings_cutover,
)
from infra.deploys.hostops import (
    HostPython,
    PathsFresh,
    applied_file,
    apply_conditions,
    config_directory,
    host_roles,
    pruned,
    render_with_secret,
    secret_file,
    units_to_reload,
)
from infra.deploys.installs import (
    RELEASE_INSTALLER_PACKAGE,
    layer_installed,
    release_installed,
    unused_layers_pruned,
)
from infra.deploys.migrations import at_release_head, migrate, migration_account
from infra.deploys.postgres import DB_CONNECTION_DEFAULTS
from infra.deploys.templating import template
from infra.release import Release, Target, build_release
from infra.release.build import LAYER_PTH, ReleaseBuildError
from infra.release.preflight import PreflightError, preflight

APP_DEFAULTS = {
    # PLINTH_ENVIRONMENT: production refuses placeholder secrets.
    "app_environment": "production",
    # Gunicorn worker processes (validated: 1..32).
    "app_workers": 2,
    # PLINTH_LOG_LEVEL: debug, info, warning or error.
    "app_log_level": "info",
    # PLINTH_MODELS: the models served, comma-separated.
    "app_models": "iris",
    # PLINTH_MAX_BATCH_SIZE: inputs per prediction request.
    "app_max_batch_size": 64,
    # Gunicorn's worker timeout and graceful shutdown window, in seconds.
    "app_timeout_seconds": 30,
    "app_graceful_timeout_seconds": 30,
    # Releases (and their uploaded artifacts) kept on the host, counting the new one and the
    # one that served until then; of the rest, those that went live most recently are kept
    # before any that never did (docs/releases.md).
    "app_keep_releases": 5,
    # Addresses (or networks) the service may reach besides localhost: a db_host on another
    # host must be in one (validation refuses it otherwise).
    "app_ip_address_allow": [],
    # Any further PLINTH_* settings, e.g. {"DB_POOL_SIZE": 10}; not those the deploy writes
    # from other keys (validate.py says which key instead).
    "app_extra_env": {},
}


@cache
def _release_for(target: Target) -> Release:
    try:
        release = build_release(target)
    except ReleaseBuildError as error:
        raise DeployError(f"release build: {error}") from None
    try:  # on the control machine, before the host is touched
        preflight(release, target)
    except PreflightError as error:
        raise DeployError(f"release preflight: {error}") from None
    return release


def host_target() -> Target:
    """Python and glibc of the host; from the Debian release before python3 is installed."""
    found = host.get_fact(HostPython)
    if found:
        return Target(found["python"], found["glibc"], found["machine"])
    release = str((host.get_fact(LinuxDistribution) or {}).get("major"))
    known = layout.SUPPORTED_DEBIAN.get(release) or layout.SUPPORTED_DEBIAN["12"]
    # The machine too (uname -m): an arm64 host must not get x86_64 wheels on its first run.
    return Target(known["python"], known["glibc"], host.get_fact(Arch) or "x86_64")


def require_provisioned() -> None:
    """For an app-only release (infra/deploys/release.py): the whole deploy has set this host
    up (a release serves behind nginx), else one line says what to run."""
    served = host.get_fact(Link, path=layout.CURRENT_LINK)
    proxied = host.get_fact(Link, path=layout.NGINX_SITE_ENABLED)
    if not (served and proxied):
        raise DeployError(
            f"release: {host.name} is not provisioned (no {layout.CURRENT_LINK} or nginx site): "
            "run the whole deploy first (infra/deploys/site.py, make deploy-*)"
        )


# The records (hostops.apply_conditions) of the env file whose settings serve, and of the
# service unit that passed its health check after the restart that applied it.
SETTINGS_RECORD = "env"
SERVICE_UNIT_RECORD = layout.SERVICE_UNIT


def database_url(data, role: str, password: str) -> str:
    host_part = f"[{data.db_host}]" if ":" in data.db_host else data.db_host  # IPv6: RFC 3986
    return f"postgresql+psycopg://{role}:{password}@{host_part}:{data.db_port}/{data.db_name}"


@deploy("App", data_defaults={**DB_CONNECTION_DEFAULTS, **APP_DEFAULTS, **RELEASE_DEFAULTS})
def app() -> None:
    data = host.data
    release = _release_for(host_target())
    release_dir = f"{layout.RELEASES_DIR}/{release.release_id}"
    artifact = f"{layout.ARTIFACTS_DIR}/{release.artifact.name}"
    layer_dir = f"{layout.DEPS_DIR}/{release.deps_key}"

    for path in (layout.APP_ROOT, layout.RELEASES_DIR, layout.ARTIFACTS_DIR, layout.DEPS_DIR):
        files.directory(name=f"{path}", path=path, mode="755", user="root", group="root")
    apt.packages(
        name=f"Release installer ({RELEASE_INSTALLER_PACKAGE})",
        packages=[RELEASE_INSTALLER_PACKAGE],
        no_recommends=True,
    )
    _install_layer(release, layer_dir)
    files.put(
        name=f"Upload release {release.release_id}",
        src=str(release.artifact),
        dest=artifact,
        mode="644",
    )
    release_installed(
        name=f"Install release {release.release_id} on layer {release.deps_key}",
        release_dir=release_dir,
        artifact=artifact,
        marker=layout.INSTALLED_MARKER,
        layer_dir=layer_dir,
        pth=LAYER_PTH,
    )

    current = host.get_fact(Link, path=layout.CURRENT_LINK)
    switching = not current or current.get("link_target") != release_dir
    # Migrate with the new release's code, before it serves; skipped when the database (the
    # inventory's, which new settings may have just named) has the release's migrations.
    # Before the env file is written: a failed migration leaves the settings that serve in
    # place, so nothing (a restart, a HUP) can start the running release with settings only
    # the new one was checked with.
    migration_account()
    if not at_release_head(data, layer_dir, release.migration_head):
        migrate(data, release_dir, database_url(data, data.db_owner, "${owner_password}"))
    release_tool()

    env_changed = _env_file(data, release_dir)
    # New settings: changed now, or left on disk unserved by a run that stopped before they
    # went live (a failed cutover, say): the record of what last served tells.
    new_settings, record_settings = apply_conditions(SETTINGS_RECORD, layout.ENV_FILE, env_changed)
    units_changed, service_unit = _units(data)
    # Restarted for a unit changed now, or left unchecked by a run that stopped or failed
    # (the unit broke the service): the record of the unit that passed tells.
    unit_pending, record_unit = apply_conditions(
        SERVICE_UNIT_RECORD, _service_unit_path(), service_unit
    )

    # Switch, re-exec Gunicorn from `current`, health check through nginx; else switch back,
    # with the previous settings too when this deploy replaced them.
    cutover = f"Cutover: current -> {release.release_id}"
    release_cutover(name=cutover, release_dir=release_dir, _if=lambda: not new_settings())
    release_cutover(
        name=f"{cutover} (and new settings)",
        release_dir=release_dir,
        settings_changed=True,
        _if=new_settings,
    )

    _prune(data, release_dir, artifact, current, release.deps_key)

    systemd.daemon_reload(name="systemd reads the changed units", _if=units_changed)
    systemd.service(
        name=f"{layout.SOCKET_UNIT} listening",
        service=layout.SOCKET_UNIT,
        running=True,
        enabled=True,
    )
    systemd.service(
        name=f"{layout.SERVICE_UNIT} running",
        service=layout.SERVICE_UNIT,
        running=True,
        enabled=True,
    )
    # A first start (nothing ran to cut over from) is judged by the same health check. First:
    # a release that never serves fails as itself, not as the restart below of its new unit.
    first_start_check(name="Health check of the first start", release_dir=release_dir)
    # A restart for a changed unit is health-checked as a cutover is: a sandbox or limit the
    # service cannot live with fails the deploy in one line, not with systemd's job error.
    checked_restart(name="Restart the service (its unit changed), health check", _if=unit_pending)
    applied_file(
        name="The service unit in effect (recorded)",
        key=SERVICE_UNIT_RECORD,
        path=_service_unit_path(),
        _if=record_unit,
    )
    if not switching:  # a cutover re-executes Gunicorn, which reads the new settings then
        settings_cutover(name="New settings: re-exec, health check", _if=new_settings)
    # Reached only when the settings serve (healthy cutover, or started with them).
    applied_file(
        name="The settings in effect (recorded)",
        key=SETTINGS_RECORD,
        path=layout.ENV_FILE,
        _if=record_settings,
    )


def _install_layer(release: Release, layer_dir: str) -> None:
    """The release's dependency layer: uploaded and installed only when the host lacks it
    (once per lock), so an app-only release neither uploads nor installs a dependency."""
    if host.get_fact(File, path=f"{layer_dir}/{layout.INSTALLED_MARKER}"):
        return
    uploaded = f"{layout.DEPS_DIR}/{release.deps_artifact.name}"
    files.put(
        name=f"Upload dependency layer {release.deps_key}",
        src=str(release.deps_artifact),
        dest=uploaded,
        mode="644",
    )
    layer_installed(
        name=f"Install dependency layer {release.deps_key}",
        layer_dir=layer_dir,
        artifact=uploaded,
        marker=layout.INSTALLED_MARKER,
    )


def _prune(data, release_dir, artifact, current, deps_key) -> None:
    keep = int(data.app_keep_releases)
    running = [release_dir, artifact]
    if current and current.get("link_target"):
        running.append(current["link_target"])  # still serving until the reload
    if serving := host.get_fact(ServingRelease):
        running.append(serving)  # what runs, should `current` name another (a failed switch back)
    pruned(
        name=f"Keep the newest {keep} releases",
        directory=layout.RELEASES_DIR,
        pattern="*/",
        keep=keep,
        protect=running,
        prefer=layout.LIVE_MARKER,
    )
    pruned(
        name=f"Keep the newest {keep} artifacts",
        directory=layout.ARTIFACTS_DIR,
        pattern="*.tar",
        keep=keep,
        protect=running,
    )
    unused_layers_pruned(
        name="Remove dependency layers no release uses",
        layers_dir=layout.DEPS_DIR,
        releases_dir=layout.RELEASES_DIR,
        protect=deps_key,
    )


def env_value(value) -> str:
    """`value` as python-dotenv (the service's reader of the env file) gives it back as it is:
    single-quoted, where it reads only two escapes, a backslash before a backslash or before
    a quote (unquoted, it cut a ` #comment` and trailing spaces and took quotes off). It
    expands `${NAME}` even there: validate refuses that."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


# The service's settings (PLINTH_<name>) the env file takes from a data key each; validate.py
# refuses them in app_extra_env, which would pass over the key's own check.
ENV_FROM_DATA = {
    "ENVIRONMENT": "app_environment",
    "MODELS": "app_models",
    "WORKERS": "app_workers",
    "LOG_LEVEL": "app_log_level",
    "MAX_BATCH_SIZE": "app_max_batch_size",
    "TIMEOUT_SECONDS": "app_timeout_seconds",
    "GRACEFUL_TIMEOUT_SECONDS": "app_graceful_timeout_seconds",
}


def _env_file(data, release_dir: str):
    """The env file: rendered without the secret, then completed on the host, where the
    release about to serve checks it first (`plinth check-config`, as the service user): a
    setting the service refuses fails the deploy with the service's own line, and the file
    in place (so the running workers, and the ones a reload starts) stays as it was."""
    env = {
        "DATABASE_URL": database_url(data, data.db_user, layout.DB_PASSWORD_PLACEHOLDER),
        **{name: data.get(key) for name, key in ENV_FROM_DATA.items()},
        **{key.upper(): value for key, value in dict(data.app_extra_env).items()},
    }
    env = {key: env_value(value) for key, value in env.items()}
    config_directory()
    secret = []
    if "db" not in host_roles():  # on a db host the postgres deploy made it already
        secret.append(
            secret_file(
                name="Database password (generated here unless copied from the db host)",
                path=layout.DB_PASSWORD_FILE,
            )
        )
    source = template(
        "app/plinth.env.j2", layout.ENV_FILE_SOURCE, name="Service settings", mode="600", env=env
    )
    fresh = host.get_fact(
        PathsFresh,
        target=layout.ENV_FILE,
        sources=[layout.ENV_FILE_SOURCE, layout.DB_PASSWORD_FILE],
    )
    # Stale (first deploy, a new secret, a failed run): render now; else when its source changes.
    render = {"_if": any_changed(source, *secret)} if fresh else {}
    return render_with_secret(
        name=f"{layout.ENV_FILE} (0640 root:{layout.SERVICE_GROUP}) with the password",
        source=layout.ENV_FILE_SOURCE,
        secret_file=layout.DB_PASSWORD_FILE,
        dest=layout.ENV_FILE,
        placeholder=layout.DB_PASSWORD_PLACEHOLDER,
        group=layout.SERVICE_GROUP,
        check=(
            f'runuser -u {layout.SERVICE_USER} -- env PLINTH_ENV_FILE="$CANDIDATE" '
            f"{release_dir}/venv/bin/{layout.APP_NAME} check-config >/dev/null"
        ),
        previous=layout.ENV_FILE_PREVIOUS,
        served_record=f"{layout.APPLIED_DIR}/{SETTINGS_RECORD}",
        **render,
    )


def _service_unit_path() -> str:
    return f"{layout.SYSTEMD_UNIT_DIR}/{layout.SERVICE_UNIT}"


def _units(data):
    """A daemon-reload's `_if`, and the service unit's operation."""
    socket = template(
        "systemd/plinth.socket.j2",
        f"{layout.SYSTEMD_UNIT_DIR}/{layout.SOCKET_UNIT}",
        name=layout.SOCKET_UNIT,
    )
    service = template(
        "systemd/plinth.service.j2",
        _service_unit_path(),
        name=layout.SERVICE_UNIT,
        ip_address_allow=" ".join(["localhost", *data.app_ip_address_allow]),
    )
    return units_to_reload([layout.SOCKET_UNIT, layout.SERVICE_UNIT], socket, service), service
