"""Group commit: the predictions of concurrent requests in one worker share one INSERT.

With PostgreSQL's durable commit every transaction waits for its WAL flush (milliseconds on
ordinary disks) and costs a round trip, a statement and a commit record. Here a request hands
its rows over and waits; one task per worker writes whatever is pending as a single INSERT (one
transaction) and wakes every request in that batch only after its COMMIT succeeded. No timer
holds rows back: an idle service writes a lone request at once, and under load a batch is what
arrived while the previous one was committing (at most ``MAX_BATCH_ROWS`` rows).

The writer owns one psycopg connection on the event loop: no thread hop and no pool pre-ping
per request. A connection found broken (the server restarted) is replaced and the batch sent
once more; ``ON CONFLICT (id) DO NOTHING`` makes that retry safe when the first attempt had
committed before the connection died. Without a connection to lose (the server is down: the
last one was dropped), a batch connects once and fails with the server's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import Context
from typing import Any

import psycopg

logger = logging.getLogger("plinth.writer")

# Bounds one statement's arrays (and its time holding the connection); requests over it wait
# for the next batch.
MAX_BATCH_ROWS = 512
# One statement text for every batch size, so psycopg prepares it once per connection.
# Arrays go in binary (%b): the text format escapes every quote of the JSON, which cost
# several times more CPU than the whole binary dump.
_INSERT = (
    "INSERT INTO predictions"
    " (id, model_name, model_version, request_id, input, output, latency_ms)"
    " SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[],"
    " %b::jsonb[], %b::jsonb[], %b::float8[])"
    " ON CONFLICT (id) DO NOTHING"
)
Row = tuple[Any, ...]  # the seven columns above; input and output as JSON text
# The database refuses every write, whatever the data: a standby after a fail-over (or
# default_transaction_read_only), or the service role lost its grants. Like an outage: the
# whole batch fails at once (503), nothing is retried row by row.
WRITES_REFUSED = (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)


class _Request:
    __slots__ = ("done", "rows")

    def __init__(self, rows: Sequence[Row], done: asyncio.Future[None]) -> None:
        self.rows = rows
        self.done = done


class PredictionWriter:
    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        timeout_seconds: float,
        on_connection_use: Callable[[int], None] | None = None,
    ) -> None:
        """``connect()`` returns an awaitable autocommit ``psycopg.AsyncConnection``;
        ``timeout_seconds`` bounds one attempt even when the server stops answering."""
        self._connect = connect
        self._timeout = timeout_seconds
        self._on_connection_use = on_connection_use or (lambda _: None)
        self._connection: psycopg.AsyncConnection | None = None
        self._pending: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._discarding: set[asyncio.Future[None]] = set()  # attempts left unanswered

    def submit(self, rows: Sequence[Row]) -> asyncio.Future[None]:
        """A future done once ``rows`` are committed, or raising the database's error.
        Cancelling it (client gone) leaves the rows in the batch: they may be stored, which is
        fine; what must never happen is an acknowledgement without the commit."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.get_loop() is not loop or self._task.done():
            self._start(loop)
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Request(rows, done))
        self._wakeup.set()  # type: ignore[union-attr]
        return done

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # Lazily, on the loop that serves requests (tests may run one app on several loops;
        # a connection or a waiter made on another loop cannot be used here).
        self._connection = None
        self._pending.clear()
        self._wakeup = asyncio.Event()
        # A context of its own, not the first request's: see InferenceBatcher.submit.
        self._task = loop.create_task(
            self._run(), name="plinth-prediction-writer", context=Context()
        )

    async def close(self) -> None:
        """At shutdown, after the server stopped taking requests; anything still waiting is
        told the database is unavailable rather than left hanging."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        for discard in list(self._discarding):  # no wait at shutdown for a stalled server
            discard.cancel()
        await asyncio.gather(*self._discarding, return_exceptions=True)
        _fail(list(self._pending), psycopg.OperationalError("the service is shutting down"))
        self._pending.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, rows = self._take_batch()
                try:
                    await self._write_batch(batch, rows)
                except asyncio.CancelledError:  # closing: whoever still waits is not left hanging
                    _fail(batch, psycopg.OperationalError("the service is shutting down"))
                    raise

    async def _write_batch(self, batch: list[_Request], rows: list[Row]) -> None:
        try:
            await self._insert(rows)
        except NoAnswer as error:
            # The server stalls: every batch queued behind would spend a full attempt of its
            # own, so the last request would wait for all of them. They all fail now.
            _fail([*batch, *self._pending], error)
            self._pending.clear()
        except (psycopg.OperationalError, *WRITES_REFUSED) as error:
            # The server is away, too slow or refuses writes: nobody in the batch is
            # acknowledged.
            _fail(batch, error)
        except psycopg.Error:
            # Most likely one request's data (e.g. a \u0000 that jsonb refuses): write each
            # request alone so that only the guilty one fails.
            await self._insert_one_by_one(batch)
        except Exception as error:  # a bug here must answer 500, never hang requests
            _fail(batch, error)
        else:
            _succeed(batch)

    def _take_batch(self) -> tuple[list[_Request], list[Row]]:
        batch: list[_Request] = []
        rows: list[Row] = []
        pending = self._pending
        while pending and (not rows or len(rows) + len(pending[0].rows) <= MAX_BATCH_ROWS):
            request = pending.popleft()
            if request.done.done():  # cancelled before its turn: it was never acknowledged
                continue
            batch.append(request)
            rows.extend(request.rows)
        return batch, rows

    async def _insert_one_by_one(self, batch: list[_Request]) -> None:
        for request in batch:
            try:
                await self._insert(request.rows)
            except Exception as error:
                _fail([request], error)
            else:
                _succeed([request])

    async def _insert(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        columns = [list(column) for column in zip(*rows, strict=True)]
        self._on_connection_use(+1)
        had_connection = self._connection is not None and not self._connection.closed
        try:
            try:
                await self._attempt(columns)
            except NoAnswer:
                raise  # its time is spent: another try would double the client's wait
            except psycopg.OperationalError:
                if not had_connection:
                    raise  # no connection to lose (the server is down): a retry would fail alike
                if self._connection is not None and not self._connection.broken:
                    raise  # e.g. the statement timeout: the server is up, do not hammer it
                logger.warning("database connection lost; reconnecting once for this batch")
                self._connection = None
                await self._attempt(columns)
        finally:
            self._on_connection_use(-1)

    async def _attempt(self, columns: list[list[Any]]) -> None:
        connection = self._connection
        if connection is not None and connection.closed:
            connection = None

        async def connect_and_insert() -> None:
            nonlocal connection
            if connection is None:
                connection = await self._connect()
            await connection.execute(_INSERT, columns)

        work = asyncio.ensure_future(connect_and_insert())
        try:
            # Waited for, not cancelled at the limit (asyncio.timeout would): a cancelled
            # execute() makes psycopg ask the server to cancel and wait for the query again,
            # up to 5 s each, all inside the request's time.
            done, _ = await asyncio.wait({work}, timeout=self._timeout)
        except asyncio.CancelledError:  # the writer is closing
            work.cancel()
            raise
        if work in done:
            self._connection = connection
            work.result()  # its error, if any
            return
        # Unanswered (server hung or unreachable): the connection's state is unknown. It is
        # cancelled and closed in the background, on its own time, not the requests'.
        self._connection = None
        discard = asyncio.ensure_future(_discard(work, lambda: connection))
        self._discarding.add(discard)
        discard.add_done_callback(self._discarding.discard)
        raise NoAnswer("the database did not answer in time")


async def _discard(work: asyncio.Future[None], connection: Callable[[], Any]) -> None:
    """An attempt left unanswered: cancelled (psycopg then asks the server to cancel its
    query), and its connection closed, whatever that takes."""
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    if (unanswered := connection()) is not None:
        with contextlib.suppress(Exception):  # given up on: nothing left to tell anyone
            await unanswered.close()


class NoAnswer(psycopg.OperationalError):
    """The database did not answer within the writer's time limit (a stalled server)."""


def _succeed(batch: list[_Request]) -> None:
    for request in batch:
        if not request.done.done():
            request.done.set_result(None)


def _fail(batch: list[_Request], error: BaseException) -> None:
    for request in batch:
        if not request.done.done():
            request.done.set_exception(error)
