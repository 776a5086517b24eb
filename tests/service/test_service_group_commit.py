"""Group commit: concurrent predictions share one INSERT, yet each request is answered from
its own batch's outcome, and nothing acknowledged is ever lost."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import psycopg
import pytest
from conftest import libpq
from fastapi import FastAPI
from service_support import IRIS_INPUT

from service.app import create_app
from service.config import Settings
from service.logs import JsonFormatter
from service.prediction_writer import PredictionWriter


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await app.state.prediction_writer.close()
        app.state.engine.dispose()


def iris(client: httpx2.AsyncClient, index: int):
    return client.post(
        "/v1/models/iris/predict",
        json={"inputs": [{**IRIS_INPUT, "sepal_length_cm": 4 + index / 100}]},
    )


def stored_ids(db: psycopg.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT id::text FROM predictions").fetchall()]


def acknowledged(responses: list[httpx2.Response]) -> list[str]:
    return [r.json()["predictions"][0]["id"] for r in responses if r.status_code == 200]


def test_concurrent_predictions_share_transactions(settings: Settings, db: psycopg.Connection):
    async def burst() -> list[httpx2.Response]:
        async with serving(create_app(settings)) as client:
            return await asyncio.gather(*(iris(client, i) for i in range(60)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 60
    assert sorted(stored_ids(db)) == sorted(acknowledged(responses))
    # now() is the transaction's start: rows written together share it.
    transactions = db.execute("SELECT count(DISTINCT created_at) FROM predictions").fetchone()[0]
    assert transactions < 60


def test_a_failed_batch_fails_every_request_in_it(
    settings: Settings, db: psycopg.Connection, migrated_database: str
) -> None:
    """The table is locked so the batch's INSERT runs into the statement timeout: every
    request waiting on it gets a 503 with Retry-After, none of them is stored, and what
    was acknowledged before and after is."""
    app = create_app(settings.model_copy(update={"db_statement_timeout_ms": 400}))

    async def scenario() -> tuple[list[httpx2.Response], list[httpx2.Response]]:
        async with serving(app) as client:
            ok = [await iris(client, 0)]
            with psycopg.connect(libpq(migrated_database)) as locker:
                locker.execute("LOCK TABLE predictions IN SHARE MODE")  # blocks INSERT only
                failed = await asyncio.gather(*(iris(client, i) for i in range(1, 21)))
                locker.rollback()
            ok.append(await iris(client, 21))
            return ok, failed

    ok, failed = asyncio.run(scenario())
    assert [r.status_code for r in ok] == [200, 200]
    assert {r.status_code for r in failed} == {503}
    assert all(r.headers["retry-after"].isdigit() for r in failed)
    assert {r.headers["content-type"] for r in failed} == {"application/problem+json"}
    assert sorted(stored_ids(db)) == sorted(acknowledged(ok))


def test_a_lost_connection_is_replaced_without_failing_the_request(
    settings: Settings, db: psycopg.Connection
) -> None:
    """No pre-ping: the writer finds its connection dead when it uses it, opens a new one
    and sends the batch again, once."""

    async def scenario() -> list[httpx2.Response]:
        async with serving(create_app(settings)) as client:
            first = await iris(client, 0)
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'plinth' AND datname = current_database()"
            )
            return [first, await iris(client, 1), await iris(client, 2)]

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(stored_ids(db)) == sorted(acknowledged(responses))


def test_a_database_never_reached_is_tried_once_per_batch_without_a_lost_connection_warning():
    """While the database is down from the start there is no connection to lose: each batch
    tries to connect once and fails (a second try at once would fail alike), and the warning
    about a lost connection is not written for every batch."""
    attempts = []
    warnings: list[str] = []

    async def refused() -> psycopg.AsyncConnection:
        attempts.append(1)
        raise psycopg.OperationalError("connection refused")

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    async def three_batches() -> None:
        writer = PredictionWriter(refused, timeout_seconds=5)
        try:
            for i in range(3):
                row = (uuid.uuid4(), "iris", "1.0.0", f"down-{i}", '{"a": 1}', '{"b": 2}', 1.0)
                with pytest.raises(psycopg.OperationalError, match="connection refused"):
                    await writer.submit([row])
        finally:
            await writer.close()

    logger = logging.getLogger("plinth.writer")
    recorder, level = Recorder(logging.WARNING), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.WARNING)
    try:
        asyncio.run(three_batches())
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    assert len(attempts) == 3
    assert warnings == []


def test_sending_a_batch_again_stores_it_once(settings: Settings, db: psycopg.Connection) -> None:
    """What makes the retry safe when the first attempt committed but its answer was lost."""
    rows = [
        (uuid.uuid4(), "iris", "1.0.0", f"again-{i}", '{"a": 1}', '{"b": 2}', 1.0) for i in range(3)
    ]

    async def twice() -> None:
        app = create_app(settings)
        try:
            await app.state.prediction_writer.submit(rows)
            await app.state.prediction_writer.submit(rows)
        finally:
            await app.state.prediction_writer.close()
            app.state.engine.dispose()

    asyncio.run(twice())
    assert sorted(stored_ids(db)) == sorted(str(row[0]) for row in rows)


def test_a_request_the_database_refuses_fails_alone(
    settings: Settings, db: psycopg.Connection, migrated_database: str
) -> None:
    """jsonb refuses \\u0000. Queued behind a blocked batch, that request and five good ones
    form the next batch: the good ones are stored and answered, only the bad one fails (422)."""
    app = create_app(settings.model_copy(update={"models": ["parrot"]}))

    def parrot(client: httpx2.AsyncClient, text: str):
        return client.post("/v1/models/parrot/predict", json={"inputs": [{"text": text}]})

    async def scenario() -> tuple[httpx2.Response, list[httpx2.Response], httpx2.Response]:
        async with serving(app) as client:
            with psycopg.connect(libpq(migrated_database)) as locker:
                locker.execute("LOCK TABLE predictions IN SHARE MODE")
                first = asyncio.ensure_future(parrot(client, "first"))
                await asyncio.sleep(1.0)  # its batch now waits for the lock
                rest = [asyncio.ensure_future(parrot(client, f"good {i}")) for i in range(5)]
                bad = asyncio.ensure_future(parrot(client, "bad \u0000"))
                await asyncio.sleep(1.0)  # all of them queued behind it
                locker.rollback()
            return await first, list(await asyncio.gather(*rest)), await bad

    first, good, bad = asyncio.run(scenario())
    assert [r.status_code for r in [first, *good]] == [200] * 6
    assert bad.status_code == 422  # the client's data, not a server fault
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["type"] == "urn:plinth:problem:unstorable-input"
    assert sorted(stored_ids(db)) == sorted(acknowledged([first, *good]))


def test_the_writers_lines_do_not_carry_the_request_id_of_the_request_that_started_it(
    settings: Settings, db: psycopg.Connection
) -> None:
    """The batcher's and the writer's tasks run for the app's life; started inside the first
    request, they took that request's context, so the writer's reconnect warning while it
    stored a later request's rows named the first request. A batch serves many requests:
    its lines name none."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journal=False))
    writer_log = logging.getLogger("plinth.writer")
    body = {"inputs": [IRIS_INPUT]}

    async def scenario() -> None:
        async with serving(create_app(settings)) as client:
            headers = {"x-request-id": "first-request"}
            first = await client.post("/v1/models/iris/predict", json=body, headers=headers)
            assert first.status_code == 200
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'plinth' AND datname = current_database()"
            )
            writer_log.addHandler(handler)  # after create_app, which sets logging up
            headers = {"x-request-id": "second-request"}
            second = await client.post("/v1/models/iris/predict", json=body, headers=headers)
            assert second.status_code == 200

    try:
        asyncio.run(scenario())
    finally:
        writer_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    lost = [line for line in lines if "connection lost" in line["message"]]
    assert lost, lines
    assert lost[0].get("request_id") in (None, "-"), lost[0]
