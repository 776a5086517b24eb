"""What a model plug-in may and may not hand back, and how its records read: a NaN or a NUL
from the model is its fault (500, nothing stored), NaN or Infinity in an input is refused
(422), and a plug-in's aliases (its wire format) are what is stored."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from test_service_api import assert_problem

from service.app import create_app
from service.config import Settings


@pytest.fixture
def plugins(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"models": ["iris", "faulty", "camel"]}))
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
