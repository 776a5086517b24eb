"""What a model plug-in may and may not hand back, and how its records read: a NaN or a NUL
from the model is its fault (500, nothing stored), so is whatever it raises, NaN or Infinity
in an input is refused (422), and a plug-in's aliases (its wire format) are what is stored."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from test_service_api import assert_problem

from service.app import create_app
from service.config import Settings


@pytest.fixture
def plugins(settings: Settings) -> Iterator[TestClient]:
    models = ["iris", "faulty", "camel", "querying"]
    app = create_app(settings.model_copy(update={"models": models}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _stored(db: psycopg.Connection) -> int:
    return db.execute("select count(*) from predictions").fetchone()[0]


@pytest.mark.parametrize("fault", ["nan", "nul"])
def test_an_output_json_or_postgresql_cannot_carry_is_the_model_s_fault(
    plugins: TestClient, db: psycopg.Connection, fault: str
) -> None:
    before = _stored(db)
    response = plugins.post("/v1/models/faulty/predict", json={"inputs": [{"text": fault}]})
    assert_problem(response, 500)
    assert _stored(db) == before
    fine = plugins.post("/v1/models/faulty/predict", json={"inputs": [{"text": "fine"}]})
    assert fine.status_code == 200 and _stored(db) == before + 1


@pytest.mark.parametrize(
    ("raised", "cause"),
    [
        ("psycopg-operational", "psycopg.OperationalError"),
        ("psycopg-data", "psycopg.DataError"),
        ("sqlalchemy-operational", "sqlalchemy.exc.OperationalError"),
        ("http-404", "starlette.exceptions.HTTPException"),
    ],
)
def test_whatever_a_plugin_raises_is_its_failure(
    plugins: TestClient,
    db: psycopg.Connection,
    caplog: pytest.LogCaptureFixture,
    raised: str,
    cause: str,
) -> None:
    """A plug-in querying a database of its own was answered by the class of what it raised,
    as if the service had: its OperationalError as the service's database away (a 503 telling
    the client to retry, no traceback), a DataError as the client's input (a 422), an
    HTTPException with its own status. Each is the model's failure: a 500 and its traceback."""
    before = _stored(db)
    response = plugins.post("/v1/models/querying/predict", json={"inputs": [{"text": raised}]})
    body = assert_problem(response, 500)
    assert body["detail"] == "internal error; quote the request id"
    assert "features" not in response.text
    assert "retry-after" not in response.headers
    assert _stored(db) == before
    (logged,) = [record for record in caplog.records if record.exc_info]
    assert logged.levelno == logging.ERROR
    traceback = logging.Formatter().formatException(logged.exc_info)  # type: ignore[arg-type]
    assert "service_plugin_models.py" in traceback  # down to the plug-in's own line
    assert f"\n{cause}: " in traceback


@pytest.mark.parametrize("token", ["Infinity", "-Infinity", "NaN"])
def test_a_non_finite_input_is_refused(
    plugins: TestClient, db: psycopg.Connection, token: str
) -> None:
    before = _stored(db)
    # A plug-in's plain float (iris bounds its own); Python's json and pydantic take the tokens.
    raw = f'{{"inputs": [{{"annualIncome": {token}, "loanAmount": 1.0}}]}}'
    response = plugins.post(
        "/v1/models/camel/predict", content=raw, headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["type"] == "urn:plinth:problem:non-finite-input"
    assert _stored(db) == before


def test_a_plugin_s_aliases_are_what_is_stored_and_read_back(plugins: TestClient) -> None:
    sent = {"annualIncome": 50000.0, "loanAmount": 10000.0}
    answer = plugins.post("/v1/models/camel/predict", json={"inputs": [sent]})
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["output"] == {"approvalScore": 0.2}
    record = plugins.get(f"/v1/predictions/{prediction['id']}").json()
    assert record["input"] == sent
    assert record["output"] == {"approvalScore": 0.2}
    again = plugins.post("/v1/models/camel/predict", json={"inputs": [record["input"]]})
    assert again.status_code == 200, again.text  # a stored input can be sent again


def _resolved(document: dict, schema: dict) -> dict:
    """``schema`` with its ``$ref`` followed; a reference to nothing fails the test."""
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        assert name in document["components"]["schemas"], f"dangling {schema['$ref']}"
        schema = document["components"]["schemas"][name]
    return schema


def _references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from [value] if key == "$ref" else _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def test_the_openapi_document_keeps_same_named_schemas_apart(settings: Settings) -> None:
    # kelvin and celsius both take a class named Problem (as the service's error schema is)
    # and answer a Readiness and a ModelList (as two of the service's own schemas are).
    app = create_app(settings.model_copy(update={"models": ["iris", "kelvin", "celsius"]}))
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    for reference in _references(document):
        _resolved(document, {"$ref": reference})
    paths = document["paths"]
    for name in ("kelvin", "celsius"):
        operation = paths[f"/v1/models/{name}/predict"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        item = _resolved(document, _resolved(document, body)["properties"]["inputs"]["items"])
        assert item["required"] == [name]
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        result = _resolved(document, _resolved(document, answer)["properties"]["predictions"])
        output = _resolved(document, _resolved(document, result["items"])["properties"]["output"])
        assert output["required"] == [name]
        # The service's own schemas are still its own.
        problem = operation["responses"]["413"]["content"]
        assert (
            "status"
            in _resolved(document, problem["application/problem+json"]["schema"])["properties"]
        )
    readiness = paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "checks" in _resolved(document, readiness["schema"])["properties"]
    models = paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "models" in _resolved(document, models["schema"])["properties"]
    iris = paths["/v1/models/iris/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "inputs" in _resolved(document, iris["schema"])["properties"]
