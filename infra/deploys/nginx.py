"""Nginx: Debian's package, the default site removed, one site on port 80 proxying to the
service's unix socket. The proxy locations live in a snippet that the TLS deploy's HTTPS server
includes too; port 80 also includes any `plinth-http-*.conf` snippet (ACME webroot, redirect)."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import DeployError, FactBase, deploy
from pyinfra.facts.files import Directory
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from infra.deploys import layout
from infra.deploys.hostops import AppliedChecksum, recorded
from infra.deploys.templating import template
from service.config import Settings

# Gunicorn closes an idle keep-alive connection after PLINTH_KEEPALIVE_SECONDS; nginx must drop
# its idle upstream connections first, or a POST (never retried) may be written to a connection
# Gunicorn is closing and get a 502.
_SERVICE_KEEPALIVE_DEFAULT = Settings.model_fields["keepalive_seconds"].default


def upstream_keepalive_timeout(extra_env: dict | None) -> int:
    # Keys in any case: the app deploy upper-cases them into PLINTH_* names.
    service_env = {str(key).upper(): value for key, value in (extra_env or {}).items()}
    try:
        service_keepalive = int(service_env.get("KEEPALIVE_SECONDS", _SERVICE_KEEPALIVE_DEFAULT))
    except (TypeError, ValueError):
        raise DeployError(
            f"app_extra_env KEEPALIVE_SECONDS {service_env['KEEPALIVE_SECONDS']!r}: not seconds"
        ) from None
    return max(1, service_keepalive - 1)


NGINX_DEFAULTS = {
    # server_name of the site; the inventory's domain.
    "domain": None,
    # Largest request body nginx passes on (bigger ones get 413 from nginx).
    "nginx_client_max_body_size": "1m",
    # Seconds nginx waits to connect to, send to and read from Gunicorn.
    "nginx_proxy_connect_timeout": 5,
    "nginx_proxy_send_timeout": 30,
    "nginx_proxy_read_timeout": 30,
    # Idle keepalive connections nginx keeps open to the upstream socket.
    "nginx_upstream_keepalive": 16,
    # Seconds a client may take to send its headers, between two body reads, and between two
    # reads of the response; and an idle keepalive connection's lifetime. Slower: cut off.
    "nginx_client_header_timeout": 10,
    "nginx_client_body_timeout": 10,
    "nginx_send_timeout": 10,
    "nginx_keepalive_timeout": 30,
    # Prediction requests per client address (nginx limit_req rate, "r/s" or "r/m") and the
    # burst served at once above it; beyond that nginx answers 429 (problem+json).
    "nginx_predict_rate": "20r/s",
    "nginx_predict_burst": 40,
    # Addresses allowed to read /metrics (everyone else gets 403).
    "nginx_metrics_allow": ["127.0.0.1", "::1"],
}


@deploy("Nginx", data_defaults=NGINX_DEFAULTS)
def nginx() -> None:
    data = host.data
    apt.packages(name="Nginx", packages=["nginx"], no_recommends=True)
    template(
        "nginx/plinth-nginx-check.j2",
        layout.NGINX_CHECK_TOOL,
        name=f"{layout.NGINX_CHECK_TOOL} (nginx -t; a refused change is put back)",
        mode="755",
    )
    changed = [
        files.link(
            name="Default site disabled", path="/etc/nginx/sites-enabled/default", present=False
        ),
        template(
            "nginx/plinth.conf.j2",
            layout.NGINX_SITE,
            name="Site: port 80, upstream to the service's socket",
            server_name=data.domain,
            upstream_keepalive=data.nginx_upstream_keepalive,
            upstream_keepalive_timeout=upstream_keepalive_timeout(data.get("app_extra_env")),
            predict_rate=data.nginx_predict_rate,
        ),
        template(
            "nginx/plinth-app.conf.j2",
            layout.NGINX_APP_LOCATIONS,
            name="Proxy locations (shared with the HTTPS server)",
            client_max_body_size=data.nginx_client_max_body_size,
            proxy_connect_timeout=data.nginx_proxy_connect_timeout,
            proxy_send_timeout=data.nginx_proxy_send_timeout,
            proxy_read_timeout=data.nginx_proxy_read_timeout,
            metrics_allow=data.nginx_metrics_allow,
            client_header_timeout=data.nginx_client_header_timeout,
            client_body_timeout=data.nginx_client_body_timeout,
            send_timeout=data.nginx_send_timeout,
            keepalive_timeout=data.nginx_keepalive_timeout,
            predict_burst=data.nginx_predict_burst,
        ),
        files.link(name="Site enabled", path=layout.NGINX_SITE_ENABLED, target=layout.NGINX_SITE),
    ]
    systemd.service(name="Nginx running and enabled", service="nginx", running=True, enabled=True)
    # Checked here only, the first of the deploys that write nginx files (tls follows): one
    # reload takes in all of them.
    pending = host.get_fact(NginxFilesChecksum) != host.get_fact(AppliedChecksum, key="nginx")
    validate_and_reload(changed, pending=pending)


# plinth's nginx files as they are on disk, in one checksum: each one's name, link target and
# content. Recorded after every reload (APPLIED_DIR/nginx), it tells what nginx has loaded.
FILES_CHECKSUM = (
    f"for f in {' '.join(map(shlex.quote, layout.NGINX_OWN_FILES))}; do "
    'if [ -e "$f" ] || [ -L "$f" ]; then echo "$f"; readlink "$f"; cat "$f"; fi; '
    "done 2>/dev/null | sha1sum | cut -d ' ' -f 1"
)


class NginxFilesChecksum(FactBase):
    """The checksum of plinth's nginx files as they are now (FILES_CHECKSUM)."""

    def command(self):
        return FILES_CHECKSUM

    def process(self, output):
        return output[0].strip()


def validate_and_reload(changed, pending: bool = False) -> None:
    """When a config file changed: `nginx -t`, and a reload once it passed. A change nginx
    refuses is put back to what it last accepted (NGINX_CHECK_TOOL) and the deploy fails, so
    no file nginx cannot load is left behind for its next start. The check also runs on a
    host that has no accepted copy yet, so that one exists before any change needs it.
    `pending`: the files on disk are not those of the last reload, which a run that stopped
    between writing them and the reload leaves behind (up to date, so unchanged from then
    on); they are checked and reloaded all the same."""
    changed_now = any_changed(*changed)
    no_accepted_copy = not host.get_fact(Directory, path=layout.NGINX_ACCEPTED_DIR)
    server.shell(
        name="nginx -t (a refused change is put back)",
        commands=[layout.NGINX_CHECK_TOOL],
        _if=lambda: no_accepted_copy or pending or changed_now(),
    )

    def reload() -> bool:
        return pending or changed_now()

    systemd.service(name="Reload nginx", service="nginx", reloaded=True, _if=reload)
    recorded(
        name="nginx's configuration in effect (recorded)",
        key="nginx",
        checksum=FILES_CHECKSUM,
        _if=reload,
    )
