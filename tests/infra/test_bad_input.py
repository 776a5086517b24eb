"""Bad input through nginx over HTTPS: schemathesis against the deployed OpenAPI document (no
5xx), bodies over the limit (413), slow clients (cut off), floods of predictions (429). Every
refusal nginx makes has the service's problem+json shape."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra.deploys import layout
from tests.infra.https_client import (
    IRIS,
    PREDICT_PATH,
    raw_tls_socket,
    request,
    resolving,
)

pytestmark = pytest.mark.infra

EXAMPLES_PER_OPERATION = 200
# The deployed defaults (infra/deploys/nginx.py): 1m body, 10 s client timeouts, 20 r/s + 40.
BODY_LIMIT = 1024 * 1024
CLIENT_TIMEOUT = 10
PREDICT_RATE = 20


def _is_problem(headers: dict, body, status: int) -> None:
    assert headers.get("content-type", "").startswith("application/problem+json"), headers
    assert isinstance(body, dict), body
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]


def test_body_over_the_limit_gets_413_from_nginx(host, rehearsal):
    status, headers, body = request(rehearsal, "POST", PREDICT_PATH, b"x" * (BODY_LIMIT + 1))
    assert status == 413
    _is_problem(headers, body, 413)


def _raw_request(rehearsal, data: bytes) -> tuple[int, dict, object]:
    """`data` sent as it is over TLS; the answer read until nginx closes the connection."""
    sock = raw_tls_socket(rehearsal, timeout=10)
    sock.sendall(data)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    "data",
    [
        # No request line nginx can read, so no URI: a named error page answered 500.
        b"FOO\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: plinth.rehearsal.test\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST /healthz HTTP/1.1\r\nHost: plinth.rehearsal.test\r\nContent-Length: abc\r\n\r\n",
    ],
    ids=["no-request-line", "header-without-colon", "no-host", "bad-content-length"],
)
def test_a_request_nginx_cannot_parse_gets_400_in_the_problem_shape(host, rehearsal, data):
    status, headers, body = _raw_request(rehearsal, data)
    assert status == 400
    _is_problem(headers, body, 400)


def test_nginx_s_own_error_page_location_is_a_404_in_the_problem_shape(host, rehearsal):
    status, headers, body = request(rehearsal, "GET", f"/_{layout.APP_NAME}/400")
    assert status == 404
    _is_problem(headers, body, 404)


def test_the_service_not_answering_is_502_or_504_in_the_problem_shape(host, rehearsal, deploy):
    """Stopped: nginx cannot connect (502). Frozen (SIGSTOP) past proxy_read_timeout, 2 s
    here: nginx gives up waiting (504)."""
    units = f"{layout.SOCKET_UNIT} {layout.SERVICE_UNIT}"
    host.check_output(f"systemctl stop {units}")
    try:
        status, headers, body = request(rehearsal, "GET", "/readyz")
        assert status == 502
        _is_problem(headers, body, 502)
    finally:
        host.check_output(f"systemctl start {units}")
    short = deploy("--data", "nginx_proxy_read_timeout=2")
    assert short.returncode == 0, short.stderr[-2000:]
    # Every process of the service's user (after a cutover the master is one systemd did
    # not fork, which `systemctl kill` refuses to signal).
    host.check_output(f"pkill -STOP -u {layout.SERVICE_USER}")
    try:
        status, headers, body = request(rehearsal, "GET", "/healthz", timeout=20)
    finally:
        host.check_output(f"pkill -CONT -u {layout.SERVICE_USER}")
        back = deploy()
    assert status == 504
    _is_problem(headers, body, 504)
    assert back.returncode == 0, back.stderr[-2000:]
    assert request(rehearsal, "GET", "/readyz")[0] == 200


def test_prediction_flood_gets_429_in_the_problem_shape(host, rehearsal):
    time.sleep(3)  # an empty bucket: earlier tests' requests have drained
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(
            pool.map(
                lambda _: request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]}),
                range(160),
            )
        )
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0, statuses
    _, headers, body = next(answer for answer in answers if answer[0] == 429)
    _is_problem(headers, body, 429)
    time.sleep(3)
    assert request(rehearsal, "GET", "/readyz")[0] == 200  # other routes were never limited
    assert request(rehearsal, "POST", PREDICT_PATH, {"inputs": [IRIS]})[0] == 200


def _closed_within(sock, seconds: float) -> float | None:
    """Seconds until the server closed the connection (reads until EOF), None if it did not."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def test_slow_clients_are_cut_off(host, rehearsal):
    header = raw_tls_socket(rehearsal, timeout=5)  # headers never finished
    header.sendall(f"GET /healthz HTTP/1.1\r\nHost: {rehearsal['domain']}\r\n".encode())
    body = raw_tls_socket(rehearsal, timeout=5)  # body promised, never sent
    body.sendall(
        f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: {rehearsal['domain']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    results = {}
    threads = [
        threading.Thread(target=lambda n, s: results.update({n: _closed_within(s, 25)}), args=a)
        for a in (("header", header), ("body", body))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    header.close()
    body.close()
    print(f"\nslow clients cut off after: {results}")
    for name, seconds in results.items():
        assert seconds is not None, f"slow {name} was never cut off"
        assert seconds < CLIENT_TIMEOUT + 5, f"slow {name} kept for {seconds:.1f} s"


def _exercise(operation, base: str, session, verify: str, counts: dict, failures: list):
    """Hypothesis drives `operation` through nginx; 5xx answers are collected in `failures`."""
    from hypothesis import HealthCheck, Phase, given, settings

    label = operation.label
    counts[label] = 0
    # The prediction routes are paced under nginx's rate limit, so every example reaches the
    # service instead of being turned away with 429.
    pace = 1.1 / PREDICT_RATE if operation.method.upper() == "POST" else 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case):
        if pace:
            time.sleep(pace)
        response = case.call(base_url=base, session=session, verify=verify, timeout=15)
        counts[label] += 1
        if response.status_code >= 500:
            failures.append((label, response.status_code, response.text[:300]))

    exercise()


def test_schemathesis_finds_no_server_error_through_nginx(host, rehearsal):
    import requests
    import schemathesis

    base = f"https://{rehearsal['domain']}"
    failures, counts, with_inputs = [], {}, set()
    with resolving(rehearsal["domain"], rehearsal["address"]):
        schema = schemathesis.openapi.from_url(
            f"{base}/openapi.json", verify=rehearsal["acme_root"]
        )
        session = requests.Session()
        session.verify = rehearsal["acme_root"]
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path_parameters or operation.query or operation.body:
                with_inputs.add(operation.label)
            _exercise(operation, base, session, rehearsal["acme_root"], counts, failures)
    print(f"\nschemathesis examples per operation: {counts}")
    assert not failures, failures[:5]
    # An operation without inputs has a single example; every other one gets the full count.
    assert all(counts[label] >= EXAMPLES_PER_OPERATION for label in with_inputs), counts
