"""The deployed service answers through nginx over HTTPS, and what it stores lands in
PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from infra.deploys import layout
from tests.infra.https_client import IRIS, PREDICT_PATH, request

pytestmark = pytest.mark.infra


def test_readyz_through_nginx_is_200(host, rehearsal):
    status, headers, body = request(rehearsal, "GET", "/readyz")
    assert status == 200, body
    assert headers.get("server") == "nginx"  # server_tokens off: no version


def test_a_prediction_through_nginx_is_stored_in_postgresql(host, rehearsal):
    status, _, body = request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = str(uuid.UUID(body["predictions"][0]["id"]))  # a UUID, safe to quote
    query = f"select count(*) from predictions where id = '{prediction_id}'"  # noqa: S608
    count = host.check_output(f'runuser -u postgres -- psql -d plinth -tAc "{query}"')
    assert count == "1"


def test_request_id_from_nginx_reaches_the_service_and_the_access_log(host, rehearsal):
    status, headers, _ = request(rehearsal, "GET", "/healthz")
    assert status == 200
    request_id = headers.get("x-request-id")
    assert request_id
    # nginx writes its access log from a buffer, flushed at least once a second.
    logged = f"grep -q request_id={request_id} {layout.NGINX_ACCESS_LOG}"
    assert host.run(f"for i in 1 2 3 4 5 6; do {logged} && exit 0; sleep 0.5; done; exit 1").rc == 0


def test_metrics_only_from_the_host_itself(host, rehearsal):
    status, _, _ = request(rehearsal, "GET", "/metrics")
    assert status == 403
    domain = rehearsal["domain"]
    on_host = host.check_output(
        "curl -sk -o /dev/null -w '%%{http_code}' --resolve %s:443:127.0.0.1 https://%s/metrics",
        domain,
        domain,
    )
    assert on_host == "200"


def test_nginx_configuration_validates(host):
    assert host.run("nginx -t -q").rc == 0


def test_nginx_drops_idle_upstream_connections_before_gunicorn_does(host):
    """Otherwise a POST, which nginx never retries, can meet a connection Gunicorn is closing
    and get a 502. Gunicorn's keep-alive is the service's default unless the env file says."""
    from infra.deploys import layout
    from infra.deploys.nginx import _SERVICE_KEEPALIVE_DEFAULT

    config = host.check_output("nginx -T 2>/dev/null")
    upstream = config.split(f"upstream {layout.NGINX_UPSTREAM} {{", 1)[1].split("}", 1)[0]
    (line,) = [ln for ln in upstream.splitlines() if ln.strip().startswith("keepalive_timeout")]
    seconds = int(line.split()[1].rstrip("s;"))
    # Only that line: the env file also holds the database password.
    found = host.run(f"grep -h '^PLINTH_KEEPALIVE_SECONDS=' {layout.ENV_FILE}").stdout.strip()
    service_keepalive = int(found.split("=", 1)[1]) if found else _SERVICE_KEEPALIVE_DEFAULT
    assert 1 <= seconds < service_keepalive
