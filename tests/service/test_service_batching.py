"""Adaptive batching: concurrent requests to one model share predict calls, each request gets
its own outputs back, a batch never exceeds the per-request limit, and an input that crashes
the model fails only its own request."""

from __future__ import annotations

import asyncio
import gc

import httpx2
import psycopg
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings


async def _fire(app, model: str, values: list[list[int]]) -> list[httpx2.Response]:
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"/v1/models/{model}/predict",
                        json={"inputs": [{"value": value} for value in request]},
                    )
                    for request in values
                )
            )
    finally:  # no lifespan under ASGITransport
        for batcher in app.state.batchers.values():
            await batcher.close()
        await app.state.prediction_writer.close()
        app.state.engine.dispose()


def test_concurrent_requests_share_predict_calls_and_get_their_own_outputs(
    settings: Settings, db: psycopg.Connection
) -> None:
    app = create_app(
        settings.model_copy(update={"models": ["recorder"], "predict_timeout_seconds": 10})
    )
    # 30 requests of 1 to 3 inputs each; the limit per request (and per batch) is 8.
    values = [[100 * i + j for j in range(1 + i % 3)] for i in range(30)]
    responses = asyncio.run(_fire(app, "recorder", values))

    assert [response.status_code for response in responses] == [200] * 30
    for request, response in zip(values, responses, strict=True):
        assert [p["output"]["value"] for p in response.json()["predictions"]] == request
    sizes = [len(batch) for batch in app.state.registry.get("recorder").predictor.batches]
    assert sum(sizes) == sum(len(request) for request in values)
    assert len(sizes) < 30  # batched: fewer model calls than requests
    assert max(sizes) <= settings.max_batch_size
    stored = db.execute("SELECT count(*), count(DISTINCT id) FROM predictions").fetchone()
    assert stored == (60, 60)


def test_an_input_crashing_the_model_fails_only_its_own_request(
    settings: Settings, db: psycopg.Connection
) -> None:
    app = create_app(
        settings.model_copy(update={"models": ["picky"], "predict_timeout_seconds": 10})
    )
    values = [[i] for i in range(10, 20)]  # 13 is the one the model cannot take
    responses = asyncio.run(_fire(app, "picky", values))

    statuses = {
        request[0]: response.status_code
        for request, response in zip(values, responses, strict=True)
    }
    assert statuses.pop(13) == 500
    assert set(statuses.values()) == {200}
    stored = {row[0]["value"] for row in db.execute("SELECT input FROM predictions").fetchall()}
    assert stored == set(range(10, 20)) - {13}
    # 13 was batched with others, then each request of that batch ran alone.
    batches = app.state.registry.get("picky").predictor.batches
    at = next(i for i, batch in enumerate(batches) if 13 in batch and len(batch) > 1)
    assert batches[at + 1 : at + 1 + len(batches[at])] == [[value] for value in batches[at]]


def test_startup_freezes_the_long_lived_heap(settings: Settings) -> None:
    # A full collection of the unfrozen app heap took 120 ms, stalling every request in flight.
    gc.unfreeze()
    with TestClient(create_app(settings)):
        assert gc.get_freeze_count() > 10_000
    gc.unfreeze()
