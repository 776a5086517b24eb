"""Adaptive batching: concurrent requests to one model share predict calls, each request gets
its own outputs back, a batch never exceeds the per-request limit, and an input that crashes
the model fails only its own request."""

from __future__ import annotations

import asyncio
import gc
import math
from pathlib import Path

import httpx2
import psycopg
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from service_support import artifacts_with_test_models, write_model

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
    # 13 was batched with others, and in the end it ran alone.
    batches = app.state.registry.get("picky").predictor.batches
    at = next(i for i, batch in enumerate(batches) if 13 in batch and len(batch) > 1)
    assert [13] in batches[at + 1 :]


def _slow_picky_app(settings: Settings, tmp_path: Path, *, delay: float, timeout: float):
    """The ``picky`` model (crashes on 13) taking ``delay`` seconds per call."""
    artifacts = artifacts_with_test_models(tmp_path)
    weights = {"delay_seconds": delay}
    write_model(artifacts, "picky", "service_plugin_models:PickyPredictor", weights)
    return create_app(
        settings.model_copy(
            update={
                "artifacts_dir": artifacts,
                "models": ["picky"],
                "max_batch_size": 64,
                "predict_timeout_seconds": timeout,
            }
        )
    )


async def _behind_a_blocker(app, values: list[int], *, then: tuple[int, ...] = ()):
    """A request of value 100 occupies the model; meanwhile one request per value in ``values``
    arrives, so they queue up and run as the next batch. Once they are all answered, one
    request per value in ``then``. Returns the statuses by value."""
    transport = httpx2.ASGITransport(app=app)

    def post(client: httpx2.AsyncClient, value: int):
        return client.post("/v1/models/picky/predict", json={"inputs": [{"value": value}]})

    try:
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://test", timeout=120
        ) as client:
            blocker = asyncio.ensure_future(post(client, 100))
            await asyncio.sleep(0.1)  # the blocker is in the model now
            queued = await asyncio.gather(*(post(client, value) for value in values))
            after = [await post(client, value) for value in then]
            statuses = {100: (await blocker).status_code}
    finally:  # no lifespan under ASGITransport
        for batcher in app.state.batchers.values():
            await batcher.close()
        await app.state.prediction_writer.close()
        app.state.engine.dispose()
    pairs = zip([*values, *then], [*queued, *after], strict=True)
    return statuses | {value: response.status_code for value, response in pairs}


def test_a_crashing_input_is_found_by_halves_not_one_request_at_a_time(
    settings: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    """One input that crashes the model among 31 good ones: each half of the batch runs as a
    batch and a half that succeeds answers all its requests, so the guilty request is found
    in O(log n) model calls (it used to take one call per request, which made the innocent
    ones time out behind it)."""
    app = _slow_picky_app(settings, tmp_path, delay=0.3, timeout=60)
    good = list(range(101, 132))
    statuses = asyncio.run(_behind_a_blocker(app, [*good[:20], 13, *good[20:]]))

    assert statuses.pop(13) == 500
    assert set(statuses.values()) == {200}
    stored = {row[0]["value"] for row in db.execute("SELECT input FROM predictions").fetchall()}
    assert stored == {100, *good}
    batches = app.state.registry.get("picky").predictor.batches
    at = next(i for i, batch in enumerate(batches) if 13 in batch)
    size = len(batches[at])
    assert size >= 16, batches  # the queued requests were batched together
    calls_to_find_it = len(batches) - at - 1
    assert calls_to_find_it <= 2 * math.ceil(math.log2(size)), batches
    assert [13] in batches[at + 1 :]  # found: it ran alone


def test_requests_answered_meanwhile_are_not_run_again(
    settings: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    """A batch that raised after its requests' deadline passed (their clients had their 504):
    none of them is run again for a client that is gone; the next request runs at once."""
    # 1.6 s per call, 2.6 s timeout: the four queued requests expire (at ~2.7 s) while their
    # batch runs (1.6 s to 3.2 s); the request sent after their 504s runs from 3.2 s to 4.8 s
    # (its deadline ~5.3 s). Half a second to spare either way.
    app = _slow_picky_app(settings, tmp_path, delay=1.6, timeout=2.6)
    statuses = asyncio.run(_behind_a_blocker(app, [10, 11, 12, 13], then=(200,)))

    batches = app.state.registry.get("picky").predictor.batches
    assert [sorted(batch) for batch in batches] == [[100], [10, 11, 12, 13], [200]]
    assert statuses == {100: 200, 10: 504, 11: 504, 12: 504, 13: 504, 200: 200}


def test_prediction_latency_is_observed_once_per_answered_request(
    settings: Settings, db: psycopg.Connection
) -> None:
    """A batch with a refused output (the ``faulty`` model answers "nan" with a NaN) is run
    again by parts: each request answered is observed once, a refused one never."""

    def observed() -> float:
        sample = "plinth_prediction_duration_seconds_count"
        return REGISTRY.get_sample_value(sample, {"model": "faulty"}) or 0.0

    app = create_app(
        settings.model_copy(update={"models": ["faulty"], "predict_timeout_seconds": 10})
    )
    texts = (["ok"] * 9 + ["nan"]) * 3

    async def burst() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        try:
            async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(
                    *(
                        client.post("/v1/models/faulty/predict", json={"inputs": [{"text": t}]})
                        for t in texts
                    )
                )
        finally:
            for batcher in app.state.batchers.values():
                await batcher.close()
            await app.state.prediction_writer.close()
            app.state.engine.dispose()

    before = observed()
    responses = asyncio.run(burst())
    statuses = [response.status_code for response in responses]
    assert statuses == [200 if text == "ok" else 500 for text in texts]
    assert observed() - before == statuses.count(200) == 27


def test_startup_freezes_the_long_lived_heap(settings: Settings) -> None:
    # A full collection of the unfrozen app heap took 120 ms, stalling every request in flight.
    gc.unfreeze()
    with TestClient(create_app(settings)):
        assert gc.get_freeze_count() > 10_000
    gc.unfreeze()
