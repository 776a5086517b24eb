"""Names of things on the host, defined once: the deploys and (through `layout_vars`) every
template read them from here. Tunables live in each deploy's `data_defaults`, not here."""

from __future__ import annotations

APP_NAME = "plinth"
# System user and group the service runs as; nginx reaches its socket through `NGINX_GROUP`.
SERVICE_USER = "plinth"
SERVICE_GROUP = "plinth"
NGINX_GROUP = "www-data"
# System user `plinth migrate` runs as during a deploy: it alone gets the database owner's
# password (in its environment, from root), which the service user can never read.
MIGRATION_USER = "plinth-migrate"

# Releases: immutable per-version directories behind an atomically switched symlink.
APP_ROOT = f"/srv/{APP_NAME}"
RELEASES_DIR = f"{APP_ROOT}/releases"
ARTIFACTS_DIR = f"{APP_ROOT}/artifacts"
DEPS_DIR = f"{APP_ROOT}/deps"  # dependency layers, one per lock, shared by releases
CURRENT_LINK = f"{APP_ROOT}/current"
RELEASE_INFO_FILE = f"{CURRENT_LINK}/release.json"
SERVICE_EXECUTABLE = f"{CURRENT_LINK}/venv/bin/{APP_NAME}"
INSTALLED_MARKER = ".installed"  # written last into a release dir: the install completed
LIVE_MARKER = ".live"  # written once a release served healthy: what a rollback may go back to

# Configuration and secrets.
CONFIG_DIR = f"/etc/{APP_NAME}"
ENV_FILE = f"{CONFIG_DIR}/{APP_NAME}.env"  # what the service reads (0640 root:plinth)
ENV_FILE_SOURCE = f"{CONFIG_DIR}/{APP_NAME}.env.in"  # rendered template, no secret (0600 root)
# The env file before the last change (0640 root:root): put back when the new one fails its
# health check (plinth-release reload-settings).
ENV_FILE_PREVIOUS = f"{ENV_FILE}.previous"
DB_PASSWORD_FILE = f"{CONFIG_DIR}/database-password"  # service role's, generated (0600 root)
DB_OWNER_PASSWORD_FILE = f"{CONFIG_DIR}/database-owner-password"  # owner role's (0600 root)
DB_PASSWORD_PLACEHOLDER = "@PLINTH_DATABASE_PASSWORD@"  # noqa: S105 (a marker, not a secret)

# systemd units and the socket only nginx may connect to.
SOCKET_UNIT = f"{APP_NAME}.socket"
SERVICE_UNIT = f"{APP_NAME}.service"
SOCKET_PATH = f"/run/{APP_NAME}.sock"
RUNTIME_DIRECTORY = APP_NAME  # /run/plinth: Gunicorn's metrics files
SYSTEMD_UNIT_DIR = "/etc/systemd/system"

# nginx: the site (port 80) and the proxy locations it shares with the TLS deploy's server.
NGINX_SITE = f"/etc/nginx/sites-available/{APP_NAME}"
NGINX_SITE_ENABLED = f"/etc/nginx/sites-enabled/{APP_NAME}"
NGINX_SNIPPETS = "/etc/nginx/snippets"
NGINX_APP_LOCATIONS = f"{NGINX_SNIPPETS}/{APP_NAME}-app.conf"
# Port-80 extras other deploys drop in (the TLS deploy's ACME webroot and its https redirect).
NGINX_HTTP_EXTRAS_GLOB = f"{NGINX_SNIPPETS}/{APP_NAME}-http-*.conf"
# The TLS deploy's: the HTTPS server, the security headers every server includes, and port 80's
# extras (their names match NGINX_HTTP_EXTRAS_GLOB).
NGINX_TLS_SITE = f"{NGINX_SITE}-tls"
NGINX_TLS_SITE_ENABLED = f"{NGINX_SITE_ENABLED}-tls"
NGINX_SECURITY_HEADERS = f"{NGINX_SNIPPETS}/{APP_NAME}-security-headers.conf"
NGINX_HTTP_SECURITY_HEADERS = f"{NGINX_SNIPPETS}/{APP_NAME}-http-security-headers.conf"
NGINX_HTTP_ACME_CHALLENGE = f"{NGINX_SNIPPETS}/{APP_NAME}-http-acme-challenge.conf"
NGINX_HTTP_REDIRECT = f"{NGINX_SNIPPETS}/{APP_NAME}-http-redirect-to-https.conf"
# Every nginx file plinth writes. When `nginx -t` refuses a deploy's change, these are put back
# as nginx last accepted them (a copy in NGINX_ACCEPTED_DIR); the refused ones are kept in
# NGINX_REJECTED_DIR (infra/templates/nginx/plinth-nginx-check.j2).
NGINX_OWN_FILES = (
    NGINX_SITE,
    NGINX_SITE_ENABLED,
    NGINX_APP_LOCATIONS,
    NGINX_TLS_SITE,
    NGINX_TLS_SITE_ENABLED,
    NGINX_SECURITY_HEADERS,
    NGINX_HTTP_SECURITY_HEADERS,
    NGINX_HTTP_ACME_CHALLENGE,
    NGINX_HTTP_REDIRECT,
)
NGINX_ACCEPTED_DIR = f"/var/lib/{APP_NAME}/nginx-accepted"
NGINX_REJECTED_DIR = f"/var/lib/{APP_NAME}/nginx-rejected"
NGINX_CHECK_TOOL = f"/usr/local/sbin/{APP_NAME}-nginx-check"
NGINX_UPSTREAM = f"{APP_NAME}_app"
NGINX_ACCESS_LOG = f"/var/log/nginx/{APP_NAME}.access.log"
NGINX_LOG_FORMAT = f"{APP_NAME}_main"
HTTP_PORT = 80
HTTPS_PORT = 443

JOURNALD_DROPIN = "/etc/systemd/journald.conf.d/50-plinth.conf"
# Checksums of configurations a reload put into effect (infra/deploys/hostops.py): a file
# written by a run that stopped before its reload is reloaded by the next run.
APPLIED_DIR = f"/var/lib/{APP_NAME}/applied"

# Logins (infra/deploys/access.py): the user every deploy after a host's first logs in as
# (key only, passwordless sudo); sshd's policy and the sudo rule are drop-ins of ours.
DEPLOY_USER = "deploy"
SSHD_DROPIN = f"/etc/ssh/sshd_config.d/10-{APP_NAME}.conf"  # before 50-cloud-init.conf: first wins
SUDOERS_DROPIN = f"/etc/sudoers.d/{APP_NAME}-deploy"  # no dot in the name: sudo would skip it
# Security updates (infra/deploys/updates.py): after Debian's 20auto-upgrades, so ours wins.
APT_AUTO_UPGRADES = f"/etc/apt/apt.conf.d/52{APP_NAME}-auto-upgrades"

# Debian releases the deploys support, with the Python and glibc each ships (the fallback
# when the host has no python3 yet; the artifact's wheels are chosen for these).
SUPPORTED_DEBIAN = {
    # locale_file: where LANG lives (13 makes /etc/default/locale a link to it).
    "12": {
        "codename": "bookworm",
        "python": "3.11",
        "glibc": "2.36",
        "locale_file": "/etc/default/locale",
    },
    "13": {
        "codename": "trixie",
        "python": "3.13",
        "glibc": "2.41",
        "locale_file": "/etc/locale.conf",
    },
}


def layout_vars() -> dict[str, object]:
    """Every name above, for templates: `{{ SOCKET_PATH }}`."""
    return {key: value for key, value in globals().items() if key.isupper()}
