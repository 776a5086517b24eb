"""The database server really stops and comes back; the same app instance recovers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from service_support import IRIS_INPUT
from sqlalchemy import make_url
from throwaway_pg import ThrowawayPostgres

from service.app import create_app
from service.config import Settings
from service.migrations import upgrade


@pytest.fixture
def own_server() -> Iterator[ThrowawayPostgres]:
    """A private server: stopping it must not disturb the other tests."""
    with ThrowawayPostgres() as server:
        upgrade(make_url(server.url()))
        yield server


def test_readiness_and_predictions_follow_the_database(
    own_server: ThrowawayPostgres, settings: Settings, test_artifacts: Path
) -> None:
    private = settings.model_copy(update={"database_url": SecretStr(own_server.url())})
    with TestClient(create_app(private), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        predict = {"inputs": [IRIS_INPUT]}
        assert client.post("/v1/models/iris/predict", json=predict).status_code == 200

        own_server.stop()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["retry-after"].isdigit()
        assert ready.json()["checks"]["database"].startswith("failed")
        down = client.post("/v1/models/iris/predict", json=predict)
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert down.headers["retry-after"].isdigit()
        assert client.get("/healthz").status_code == 200

        own_server.start()
        assert client.get("/readyz").status_code == 200
        back = client.post("/v1/models/iris/predict", json=predict)
        assert back.status_code == 200
        prediction_id = back.json()["predictions"][0]["id"]
        assert client.get(f"/v1/predictions/{prediction_id}").status_code == 200
