"""The database server really stops and comes back; the same app instance recovers. A database
that turned read-only (a fail-over to a standby) is not ready and predictions answer 503."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from service_support import IRIS_INPUT, pool_in_use
from sqlalchemy import event, make_url
from test_service_group_commit import serving
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

        in_use = pool_in_use(client)
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
        # The failed checkouts of the outage were not counted back in (it drifted below 0).
        assert pool_in_use(client) == in_use


@pytest.fixture
def read_only_database(db: psycopg.Connection, migrated_database: str) -> Iterator[None]:
    """New sessions of the test database are read-only, as on a standby after a fail-over."""
    name = make_url(migrated_database).database
    db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        yield
    finally:
        db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


def test_a_read_only_database_is_not_ready_and_predictions_are_503(
    read_only_database: None, settings: Settings, db: psycopg.Connection
) -> None:
    # Built after the change: the setting applies to new connections only.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("failed: read-only")
        assert ready.json()["checks"]["migrations"] == "ok"
        for inputs in ([IRIS_INPUT], [IRIS_INPUT, IRIS_INPUT]):
            response = client.post("/v1/models/iris/predict", json={"inputs": inputs})
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"].isdigit()
            assert "writes" in response.json()["detail"]
    assert db.execute("SELECT count(*) FROM predictions").fetchone() == (0,)


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database on the test server that nobody migrated (a deploy that skipped it)."""
    name = f"unmigrated_{secrets.token_hex(4)}"
    admin = make_url(database_url)
    postgres = admin.set(database="postgres", drivername="postgresql")
    with psycopg.connect(postgres.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(
            postgres.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_database_that_is_not_migrated_is_not_ready_and_requests_are_503(
    empty_database: str,
) -> None:
    """The tables are missing: readiness names the migrations; a prediction and a read answer
    503 problems with a retry (they were 500s with a traceback)."""
    settings = Settings(environment="testing", database_url=empty_database, models=["iris"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["migrations"].startswith("failed: at empty database")
        for response in (
            client.post("/v1/models/iris/predict", json={"inputs": [IRIS_INPUT]}),
            client.get("/v1/predictions/00000000-0000-4000-8000-000000000000"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"].isdigit()


def _signal_server(server: ThrowawayPostgres, number: int) -> None:
    """The postmaster and its backends: SIGSTOP freezes the server as a hung disk or a paused
    VM does (connections stay open, nothing answers); SIGCONT thaws it."""
    assert server.process is not None
    children = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in [server.process.pid, *map(int, children)]:
        os.kill(pid, number)


def _answer_within(call, seconds: float):
    """`call()`'s result, or a failure if it has none within `seconds` (a hang)."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"no answer within {seconds} s"
    return result[0]


def test_a_stalled_database_is_not_ready_and_predictions_answer_503(
    own_server: ThrowawayPostgres, settings: Settings
) -> None:
    """A server that accepts and never answers: readiness says so within its own deadline
    (statement timeout + pool timeout) instead of hanging, and a prediction answers 503 after
    one try, not two."""
    private = settings.model_copy(
        update={
            "database_url": SecretStr(own_server.url()),
            "db_statement_timeout_ms": 1000,
            "db_pool_timeout_seconds": 1,
        }
    )
    predict = {"inputs": [IRIS_INPUT]}
    with TestClient(create_app(private), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/models/iris/predict", json=predict).status_code == 200
        _signal_server(own_server, signal.SIGSTOP)
        try:
            ready = _answer_within(lambda: client.get("/readyz"), 30)
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"] == "failed: no answer within 2 s"
            down = _answer_within(lambda: client.post("/v1/models/iris/predict", json=predict), 30)
            assert down.status_code == 503, down.text
        finally:
            _signal_server(own_server, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready once the server answers again"
            time.sleep(0.2)
        assert client.post("/v1/models/iris/predict", json=predict).status_code == 200


def _stalling(own_server: ThrowawayPostgres, settings: Settings, **update) -> Settings:
    """Settings on `own_server` with one write attempt bounded at 1 s + 1 s (statement
    timeout + pool timeout, as app.py gives the writer)."""
    update = {"db_statement_timeout_ms": 1000, "db_pool_timeout_seconds": 1, **update}
    return settings.model_copy(update={"database_url": SecretStr(own_server.url()), **update})


def test_a_stall_in_the_middle_of_an_insert_answers_within_the_writers_limit(
    own_server: ThrowawayPostgres, settings: Settings
) -> None:
    """The writer already holds its connection when the server freezes, so the INSERT
    itself hangs. Cancelling psycopg's execute() at the limit made psycopg ask the server to
    cancel and wait for the query again, 5 s each, inside the request's time: 12 s for a
    2 s limit. The answer now comes at the limit; the attempt is given up in the background."""
    predict = {"inputs": [IRIS_INPUT]}
    app = create_app(_stalling(own_server, settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/models/iris/predict", json=predict).status_code == 200
        _signal_server(own_server, signal.SIGSTOP)
        try:
            down = _answer_within(lambda: client.post("/v1/models/iris/predict", json=predict), 5)
        finally:
            _signal_server(own_server, signal.SIGCONT)
        assert down.status_code == 503, down.text
        deadline = time.monotonic() + 30
        while client.post("/v1/models/iris/predict", json=predict).status_code != 200:
            assert time.monotonic() < deadline, "predictions not stored once the server answers"
            time.sleep(0.2)


def test_requests_queued_behind_a_stalled_database_fail_with_the_first_batch(
    own_server: ThrowawayPostgres, settings: Settings
) -> None:
    """64 concurrent requests of 64 inputs are 8 writer batches (MAX_BATCH_ROWS 512). Each
    used to spend a full attempt against the frozen server in turn, so the last request
    waited for all 8 (13.5 s for a 1.5 s limit); now every request in the queue fails when
    the first attempt does."""
    private = _stalling(
        own_server,
        settings,
        db_statement_timeout_ms=500,
        max_batch_size=64,
        predict_timeout_seconds=30,
    )
    body = {"inputs": [IRIS_INPUT] * 64}

    async def scenario() -> list[int]:
        async with serving(create_app(private)) as client:
            _signal_server(own_server, signal.SIGSTOP)
            try:
                posts = (client.post("/v1/models/iris/predict", json=body) for _ in range(64))
                answers = await asyncio.wait_for(asyncio.gather(*posts), timeout=5)
            finally:
                _signal_server(own_server, signal.SIGCONT)
            return [answer.status_code for answer in answers]

    assert set(asyncio.run(scenario())) == {503}


def test_a_worker_starts_and_serves_while_the_database_stalls(
    own_server: ThrowawayPostgres, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server freezes once the worker's first connection is made (a hung storage accepts
    connections and never answers): recording the loaded models at startup waited for it for
    good, so the worker never served, not even /healthz (Gunicorn killed it at its timeout and
    the next one hung alike). The record is now given up at the limit, with a warning."""
    app = create_app(_stalling(own_server, settings))
    freeze = lambda *_: _signal_server(own_server, signal.SIGSTOP)  # noqa: E731
    event.listen(app.state.engine, "connect", freeze, once=True)

    def start_and_probe() -> int:
        with TestClient(app, raise_server_exceptions=False) as client:
            return client.get("/healthz").status_code

    try:
        assert _answer_within(start_and_probe, 5) == 200
    finally:
        _signal_server(own_server, signal.SIGCONT)
    # The log's handler writes to the stdout of when the app was built: pytest's capture.
    assert "could not record loaded models: no answer within 2 s" in capsys.readouterr().out


def test_reads_answer_503_within_the_limit_while_the_database_stalls(
    own_server: ThrowawayPostgres, settings: Settings
) -> None:
    """A read of a stored prediction waited for a frozen server for good, and held one of the
    40 threads sync routes run on: 41 reads left /metrics queued behind them. Each read now
    answers the database's 503 at the limit, and /metrics is served right after."""
    predict = {"inputs": [IRIS_INPUT]}

    async def scenario() -> tuple[list[httpx2.Response], httpx2.Response]:
        async with serving(create_app(_stalling(own_server, settings))) as client:
            stored = await client.post("/v1/models/iris/predict", json=predict)
            path = f"/v1/predictions/{stored.json()['predictions'][0]['id']}"
            assert (await client.get(path)).status_code == 200  # a pooled connection is left
            _signal_server(own_server, signal.SIGSTOP)
            try:
                reads = (client.get(path) for _ in range(41))
                answers = await asyncio.wait_for(asyncio.gather(*reads), timeout=8)
                metrics = await asyncio.wait_for(client.get("/metrics"), timeout=2)
            finally:
                _signal_server(own_server, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while (await client.get(path)).status_code != 200:
                assert time.monotonic() < deadline, "no read once the server answers again"
                await asyncio.sleep(0.2)
            return answers, metrics

    answers, metrics = asyncio.run(scenario())
    assert {answer.status_code for answer in answers} == {503}
    for answer in answers:
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"].isdigit()
        assert answer.json()["type"] == "urn:plinth:problem:database-unavailable"
    assert metrics.status_code == 200
