"""Every endpoint and every documented error, in process against the real database."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr
from service_support import IRIS_INPUT, artifacts_with_test_models, pool_in_use

from service.app import create_app
from service.config import Settings

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


def predict(client: TestClient, inputs: object, model: str = "iris", **kwargs):
    return client.post(f"/v1/models/{model}/predict", json={"inputs": inputs}, **kwargs)


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_everything_is_up(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "migrations": "ok", "models": "ok"}


def test_version_reads_release_file_at_creation(settings: Settings, tmp_path: Path) -> None:
    release = tmp_path / "release.json"
    release.write_text(json.dumps({"version": "2024.1", "git_revision": "abc123"}))
    with TestClient(create_app(settings.model_copy(update={"release_info_file": release}))) as c:
        body = c.get("/version").json()
    assert body["version"] == "2024.1"
    assert body["git_revision"] == "abc123"
    assert body["build_time"] == "unknown"


def test_version_falls_back_to_unknown(client: TestClient) -> None:
    body = client.get("/version").json()
    assert body["git_revision"] == "unknown"
    assert body["build_time"] == "unknown"
    assert body["version"] == body["package_version"] != ""


def test_models_listing_and_detail(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["models"]
    assert [model["name"] for model in listed] == ["iris", "sleepy", "broken"]
    iris = client.get("/v1/models/iris").json()
    assert iris["version"] == "1.0.0"
    assert len(iris["artifact_sha256"]) == 64
    assert set(iris["input_schema"]["properties"]) == set(IRIS_INPUT)


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_problem(client.get("/v1/models/nope"), 404)
    body = assert_problem(predict(client, [IRIS_INPUT], model="nope"), 404)
    assert "nope" in body["detail"]


def test_models_loaded_are_recorded_in_registry_table(
    client: TestClient, db: psycopg.Connection
) -> None:
    rows = db.execute(
        "SELECT name, version, framework FROM model_registry ORDER BY name"
    ).fetchall()
    assert ("iris", "1.0.0", "pure-python") in rows


def test_predict_persists_every_item_before_answering(
    client: TestClient, db: psycopg.Connection
) -> None:
    virginica = {
        **IRIS_INPUT,
        "petal_length_cm": 5.8,
        "petal_width_cm": 2.2,
        "sepal_length_cm": 6.9,
    }
    response = predict(client, [IRIS_INPUT, virginica], headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "iris" and body["model_version"] == "1.0.0"
    assert body["request_id"] == "req-42" == response.headers["x-request-id"]
    species = [item["output"]["species"] for item in body["predictions"]]
    assert species == ["setosa", "virginica"]
    ids = [item["id"] for item in body["predictions"]]
    stored = db.execute(
        "SELECT id::text, request_id, input, output FROM predictions"
        " ORDER BY input->>'petal_length_cm'"
    ).fetchall()
    assert sorted(row[0] for row in stored) == sorted(ids)
    assert {row[1] for row in stored} == {"req-42"}
    assert stored[0][2] == IRIS_INPUT
    assert stored[0][3]["species"] == "setosa"


def test_prediction_can_be_read_back(client: TestClient) -> None:
    prediction_id = predict(client, [IRIS_INPUT]).json()["predictions"][0]["id"]
    record = client.get(f"/v1/predictions/{prediction_id}").json()
    assert record["id"] == prediction_id
    assert record["input"] == IRIS_INPUT
    assert record["model_name"] == "iris"
    assert record["latency_ms"] >= 0


def test_unknown_prediction_is_404_and_invalid_id_is_422(client: TestClient) -> None:
    assert_problem(client.get(f"/v1/predictions/{uuid.uuid4()}"), 404)
    body = assert_problem(client.get("/v1/predictions/not-a-uuid"), 422)
    assert body["errors"][0]["field"] == "path.prediction_id"


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ([{**IRIS_INPUT, "sepal_length_cm": "wide"}], "body.inputs.0.sepal_length_cm"),
        (
            [{k: v for k, v in IRIS_INPUT.items() if k != "petal_width_cm"}],
            "body.inputs.0.petal_width_cm",
        ),
        ([IRIS_INPUT, {**IRIS_INPUT, "colour": "blue"}], "body.inputs.1.colour"),
        ([{**IRIS_INPUT, "petal_length_cm": -1}], "body.inputs.0.petal_length_cm"),
        ([], "body.inputs"),
        ("not a list", "body.inputs"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    client: TestClient, db: psycopg.Connection, inputs: object, field: str
) -> None:
    body = assert_problem(predict(client, inputs), 422)
    assert field in [error["field"] for error in body["errors"]]
    assert field in body["detail"]
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (0,)


@pytest.mark.parametrize(
    "raw", [b"{", b"[]", b"null", b'{"inputs": [1, 2]}', b"\xff\xfe", b'{"other": 1}']
)
def test_malformed_bodies_are_422_never_500(client: TestClient, raw: bytes) -> None:
    response = client.post(
        "/v1/models/iris/predict", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)


def test_a_body_not_sent_as_json_is_422(client: TestClient, db: psycopg.Connection) -> None:
    response = client.post(
        "/v1/models/iris/predict",
        content=json.dumps({"inputs": [IRIS_INPUT]}),
        headers={"content-type": "text/plain"},
    )
    body = assert_problem(response, 422)
    assert body["errors"][0]["field"] == "body"
    assert "application/json" in body["detail"]
    charset = {"content-type": "application/json; charset=utf-8"}
    ok = client.post(
        "/v1/models/iris/predict", content=json.dumps({"inputs": [IRIS_INPUT]}), headers=charset
    )
    assert ok.status_code == 200
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (1,)


@pytest.mark.parametrize(
    "codings", [["gzip"], ["br"], ["gzip, identity"], ["identity", "gzip"]], ids=str
)
def test_a_body_with_a_content_coding_is_415_naming_identity(
    client: TestClient, db: psycopg.Connection, codings: list[str]
) -> None:
    # nginx compresses answers, so a client may compress its batches too: a gzipped body was
    # parsed as JSON and called invalid (a 422 the client cannot fix by fixing its JSON), and
    # a body labelled with a coding it did not have was stored as if it had none.
    raw = json.dumps({"inputs": [IRIS_INPUT]}).encode()
    body = gzip.compress(raw) if "gzip" in ",".join(codings) else raw
    headers = [("content-type", "application/json")]
    response = client.post(
        "/v1/models/iris/predict",
        content=body,
        headers=headers + [("content-encoding", coding) for coding in codings],
    )
    problem = assert_problem(response, 415)
    assert problem["type"] == "urn:plinth:problem:unsupported-content-encoding"
    assert response.headers["accept-encoding"] == "identity"  # RFC 7694
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    identity = [*headers, ("content-encoding", "Identity")]
    assert client.post("/v1/models/iris/predict", content=raw, headers=identity).status_code == 200


def test_batch_over_the_limit_is_413(client: TestClient, db: psycopg.Connection) -> None:
    assert predict(client, [IRIS_INPUT] * 8).status_code == 200
    body = assert_problem(predict(client, [IRIS_INPUT] * 9), 413)
    assert "8" in body["detail"]
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (8,)


def test_slow_model_times_out_with_504_and_stores_nothing(
    client: TestClient, db: psycopg.Connection
) -> None:
    body = assert_problem(predict(client, [{"value": 1}], model="sleepy"), 504)
    assert "sleepy" in body["detail"]
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    # Inference and the write share one worker thread: once the abandoned inference finishes
    # (the sleepy model takes 1s), that thread must still not write.
    time.sleep(1.0)
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (0,)


def test_a_wedged_model_makes_the_service_not_ready_until_it_answers(
    settings: Settings, tmp_path: Path
) -> None:
    # sleepy's call runs 3 s; each request gives up after 0.5 s.
    artifacts = artifacts_with_test_models(tmp_path, sleepy_delay=3.0)
    with TestClient(
        create_app(settings.model_copy(update={"artifacts_dir": artifacts})),
        raise_server_exceptions=False,
    ) as client:
        assert client.get("/readyz").status_code == 200
        assert_problem(predict(client, [{"value": 1}], model="sleepy"), 504)
        body = assert_problem(client.get("/readyz"), 503)
        assert body["checks"]["models"].startswith("failed: a predict call unanswered: sleepy")
        assert body["checks"]["database"] == "ok"
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        assert ready.json()["checks"]["models"] == "ok"


def test_model_crash_is_a_500_without_internals(client: TestClient) -> None:
    response = predict(client, [{"value": 1}], model="broken")
    assert_problem(response, 500)
    assert "secret internal detail" not in response.text
    assert "RuntimeError" not in response.text


@pytest.mark.parametrize("value", [13, 14], ids=["stop-iteration", "system-exit"])
def test_a_model_raising_past_exception_handlers_fails_that_request_only(
    settings: Settings, value: int
) -> None:
    """A StopIteration cannot be set on an asyncio future (the await never ended, and every
    later request to the model timed out); a SystemExit would end the worker. Each is the
    crashing request's 500, and the model goes on serving."""
    escaping = settings.model_copy(update={"models": ["escaping"]})
    with TestClient(create_app(escaping), raise_server_exceptions=False) as client:
        assert_problem(predict(client, [{"value": value}], model="escaping"), 500)
        after = predict(client, [{"value": 1}], model="escaping")
        assert after.status_code == 200, after.text


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert_problem(client.get("/no/such/route"), 404)
    body = assert_problem(client.delete("/healthz"), 405)
    assert body["title"] == "Method Not Allowed"
    # HEAD is served wherever GET is (service.head), so Allow says so too (RFC 9110 15.5.6).
    assert client.delete("/healthz").headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/version", "/v1/models"])
def test_head_answers_as_get_without_a_body(client: TestClient, path: str) -> None:
    """RFC 9110: HEAD wherever GET is served (uptime probes use it); same status and headers."""
    get, head = client.get(path), client.head(path)
    assert (head.status_code, get.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_is_counted_under_its_route(client: TestClient) -> None:
    series = 'plinth_http_requests_total{method="HEAD",route="/healthz",status="200"}'

    def count() -> float:
        lines = client.get("/metrics").text.splitlines()
        return next((float(line.split()[-1]) for line in lines if line.startswith(series)), 0.0)

    before = count()
    client.head("/healthz")
    assert count() == before + 1  # not under "<unmatched>"


def test_head_of_a_post_only_route_is_405(client: TestClient) -> None:
    response = client.head("/v1/models/iris/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_request_id_is_taken_from_header_or_generated(client: TestClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"] == "abc-1"
    )
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    # A header that could inject into logs is replaced, not echoed.
    hostile = client.get("/healthz", headers={"X-Request-ID": 'x" injected'}).headers[
        "x-request-id"
    ]
    assert hostile != 'x" injected' and len(hostile) == 32


def test_metrics_exposition(client: TestClient) -> None:
    predict(client, [IRIS_INPUT])
    text = client.get("/metrics").text
    assert (
        'plinth_http_requests_total{method="POST",route="/v1/models/iris/predict",status="200"}'
        in text
    )
    assert 'plinth_prediction_duration_seconds_count{model="iris"}' in text
    assert "plinth_db_pool_connections_in_use" in text


def test_pool_gauge_counts_the_connections_in_use(client: TestClient) -> None:
    predict(client, [IRIS_INPUT])  # its write counted in use, then out again
    idle = pool_in_use(client)
    with client.app.state.engine.connect():  # one checked out of the pool
        assert pool_in_use(client) == idle + 1
    assert pool_in_use(client) == idle


def test_database_unreachable_gives_503_with_retry_after(
    settings: Settings, test_artifacts: Path
) -> None:
    # A port nobody listens on: connection refused, like a stopped server.
    from throwaway_pg import free_port

    down = settings.model_copy(
        update={"database_url": SecretStr(f"postgresql+psycopg://u:p@127.0.0.1:{free_port()}/x")}
    )
    with TestClient(create_app(down), raise_server_exceptions=False) as c:
        for response in (
            predict(c, [IRIS_INPUT]),
            c.get(f"/v1/predictions/{uuid.uuid4()}"),
            c.get("/readyz"),
        ):
            body = assert_problem(response, 503)
            assert response.headers["retry-after"].isdigit()
        assert body["checks"]["database"].startswith("failed")
        assert c.get("/healthz").status_code == 200


EXPECTED_STATUSES = {
    ("/healthz", "get"): {"200", "500"},
    ("/readyz", "get"): {"200", "500", "503"},
    ("/version", "get"): {"200", "500"},
    ("/metrics", "get"): {"200", "500"},
    ("/v1/models", "get"): {"200", "500"},
    ("/v1/models/{name}", "get"): {"200", "404", "422", "500"},
    ("/v1/models/iris/predict", "post"): {"200", "413", "415", "422", "500", "503", "504"},
    ("/v1/models/{name}/predict", "post"): {"200", "404", "422", "500"},
    ("/v1/predictions/{prediction_id}", "get"): {"200", "404", "422", "500", "503"},
}


def test_openapi_lists_every_status_with_the_problem_schema(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for (path, method), statuses in EXPECTED_STATUSES.items():
        responses = document["paths"][path][method]["responses"]
        assert set(responses) == statuses, (path, method)
        for status in statuses - {"200"}:
            assert PROBLEM in responses[status]["content"], (path, status)
    assert "Retry-After" in document["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]
    # The predict route parses its body itself: the document still names the body's schema.
    body = document["paths"]["/v1/models/iris/predict"]["post"]["requestBody"]
    reference = body["content"]["application/json"]["schema"]["$ref"]
    request_schema = document["components"]["schemas"][reference.rsplit("/", 1)[-1]]
    assert request_schema["required"] == ["inputs"]
    assert body["required"] is True
    assert {"Problem", "ValidationProblem", "ReadinessProblem"} <= set(
        document["components"]["schemas"]
    )


def test_a_huge_batch_of_junk_is_refused_at_once_with_a_small_body(client: TestClient) -> None:
    # Under 1 MB of empty objects: refused on its length before any item is validated (it used
    # to validate all of them and answer a 422 of 100+ MB listing millions of errors).
    response = client.post(
        "/v1/models/iris/predict",
        content=json.dumps({"inputs": [{}] * 100_000}),
        headers={"content-type": "application/json"},
    )
    assert len(response.content) < 1000, response.text[:300]
    body = assert_problem(response, 413)
    assert body["detail"] == "batch of 100000 exceeds the limit of 8 inputs"
    assert "errors" not in body


def test_a_422_lists_at_most_20_errors_and_counts_the_rest(client: TestClient) -> None:
    # Eight empty inputs, four missing fields each: 32 errors.
    body = assert_problem(predict(client, [{}] * 8), 422)
    assert len(body["errors"]) == 20
    assert body["errors_omitted"] == 12
    assert body["errors"][0]["field"] == "body.inputs.0.sepal_length_cm"
    one = assert_problem(predict(client, [{**IRIS_INPUT, "colour": "blue"}]), 422)
    assert len(one["errors"]) == 1 and one["errors_omitted"] == 0


def test_a_client_gone_mid_body_is_499_without_a_traceback(settings: Settings) -> None:
    app = create_app(settings)
    # What uvicorn hands the app when the client closes the connection mid-body.
    messages = [
        {"type": "http.request", "body": b'{"inputs": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/iris/predict",
        "raw_path": b"/v1/models/iris/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    def count(status: str) -> float:
        labels = {"method": "POST", "route": "/v1/models/iris/predict", "status": status}
        return REGISTRY.get_sample_value("plinth_http_requests_total", labels) or 0.0

    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(collector)  # after create_app, which set up logging
    before_499, before_500 = count("499"), count("500")
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        logging.getLogger().removeHandler(collector)
        app.state.engine.dispose()
    assert (count("499"), count("500")) == (before_499 + 1, before_500)
    assert sent == []  # nobody to answer
    assert not [record for record in records if record.levelno >= logging.ERROR]
    assert not [record for record in records if record.exc_info]
    access = [record for record in records if record.name == "plinth.access"]
    assert [record.status for record in access] == [499]  # type: ignore[attr-defined]
