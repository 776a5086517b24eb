"""The deployed service answers through nginx, and what it stores lands in PostgreSQL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.infra

IRIS = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}


def _request(base_url, path, body=None, domain=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if domain:
        headers["Host"] = domain
    request = urllib.request.Request(base_url + path, data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_readyz_through_nginx_is_200(host, base_url, rehearsal):
    status, headers, body = _request(base_url, "/readyz", domain=rehearsal["domain"])
    assert status == 200, body
    assert headers.get("Server") == "nginx"  # server_tokens off: no version


def test_a_prediction_through_nginx_is_stored_in_postgresql(host, base_url):
    status, _, body = _request(base_url, "/v1/models/iris/predict", {"inputs": [IRIS]})
    assert status == 200, body
    prediction_id = str(uuid.UUID(json.loads(body)["predictions"][0]["id"]))  # a UUID, quoted
    query = f"select count(*) from predictions where id = '{prediction_id}'"  # noqa: S608
    count = host.check_output(f'runuser -u postgres -- psql -d plinth -tAc "{query}"')
    assert count == "1"


def test_request_id_from_nginx_reaches_the_service_and_the_access_log(host, base_url):
    status, headers, _ = _request(base_url, "/healthz")
    assert status == 200
    request_id = headers.get("x-request-id") or headers.get("X-Request-ID")
    assert request_id
    assert host.run(f"grep -q request_id={request_id} /var/log/nginx/plinth.access.log").rc == 0


def test_metrics_only_from_the_host_itself(host, base_url):
    status, _, _ = _request(base_url, "/metrics")
    assert status == 403
    assert (
        host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/metrics")
        == "200"
    )


def test_nginx_configuration_validates(host):
    assert host.run("nginx -t -q").rc == 0
