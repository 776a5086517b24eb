"""Adaptive batching: the inputs of concurrent requests to one model run as one predict call,
then each request's rows go to the prediction writer and its answer comes once they are stored.

What model servers do (Triton's dynamic batcher, TorchServe, BentoML, Ray Serve): a model call
has a fixed cost that a batch pays once. Here it is the hop to the inference thread and back,
which cost as much CPU as the rest of a prediction; on a real model it is also the framework's
per-call overhead. No timer holds requests back: an idle model runs a lone request at once;
under load a batch is whatever arrived while the previous one ran, at most ``max_items`` inputs
(the per-request limit, so a model never sees more inputs at once than one request may send).

One batch per model is in flight at a time in a worker process (Gunicorn's workers give the
parallelism). A request waits on a single future through inference and commit: each await
resumes the whole middleware stack, which cost more CPU than the bookkeeping done here.

A batch that raises is split in halves, each run again as a batch (a half that succeeds answers
all its requests; one that raises is split again), so an input that crashes the model fails its
own request only, found in O(log n) model calls rather than one call per request. Requests
already answered (their client had its 504) or past their deadline are not run again. Written
here rather than taken from a library: it is the glue between this service's executor, its
timeouts and its persistence rows, in few lines.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextvars import Context

from pydantic import BaseModel

from service.metrics import PREDICTION_LATENCY
from service.prediction_writer import Row
from service.predictors import LoadedModel


class InferenceTimeout(TimeoutError):
    """The model did not answer within the request's timeout; nothing was stored."""


class ModelError(RuntimeError):
    """The model failed: its predict raised (the original is the ``__cause__``), or it answered
    what it must not. A 500, whatever the class of what it raised."""


class Inference:
    """One request's answer: an id, an output and a row to store per input, and its queue
    wait plus inference in seconds."""

    __slots__ = ("ids", "outputs", "rows", "seconds")

    def __init__(
        self, ids: list[uuid.UUID], outputs: list[BaseModel], rows: list[Row], seconds: float
    ) -> None:
        self.ids, self.outputs, self.rows, self.seconds = ids, outputs, rows, seconds


class _Request:
    __slots__ = ("done", "items", "request_id", "submitted", "timer")

    def __init__(
        self, items: Sequence[BaseModel], request_id: str, done: asyncio.Future[Inference]
    ) -> None:
        self.items, self.request_id, self.done = items, request_id, done
        self.submitted = time.perf_counter()
        self.timer: asyncio.TimerHandle | None = None


class InferenceBatcher:
    def __init__(
        self,
        model: LoadedModel,
        executor: Executor,
        store: Callable[[Sequence[Row]], asyncio.Future[None]],
        *,
        max_items: int,
        timeout_seconds: float,
    ) -> None:
        """``store(rows)`` starts persisting rows and returns a future done once they are
        committed (``PredictionWriter.submit``); ``timeout_seconds`` bounds queue wait plus
        inference, not the commit (which the writer bounds)."""
        self._model = model
        self._latency = PREDICTION_LATENCY.labels(model.name)
        self._executor = executor
        self._store = store
        self._max_items = max_items
        self._timeout = timeout_seconds
        self._pending: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._call_started: float | None = None

    def submit(self, items: Sequence[BaseModel], request_id: str) -> asyncio.Future[Inference]:
        """A future of this request's ``Inference``, done once its rows are committed. It
        raises ``InferenceTimeout`` (nothing stored), ``ModelError``, or the database's
        error. Cancelling it drops the request, unless its rows are being stored."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.get_loop() is not loop or self._task.done():
            # Lazily, on the loop that serves requests (tests run one app on several loops).
            self._pending.clear()
            self._wakeup = asyncio.Event()
            # A context of its own: the request that happens to start the task would otherwise
            # lend its request id to every line the task ever logs (a batch serves many).
            self._task = loop.create_task(
                self._run(), name=f"plinth-batcher-{self._model.name}", context=Context()
            )
        done: asyncio.Future[Inference] = loop.create_future()
        request = _Request(items, request_id, done)
        request.timer = loop.call_later(self._timeout, _expire, request)
        self._pending.append(request)
        self._wakeup.set()  # type: ignore[union-attr]
        return done

    def stalled_for(self) -> float | None:
        """Seconds the predict call in flight has gone unanswered (waiting for the inference
        thread, or running), once past the timeout: every request it carries has had its 504,
        and those queued behind it will have theirs. None while the model keeps up."""
        started = self._call_started
        if started is None:
            return None
        waited = time.perf_counter() - started
        return waited if waited >= self._timeout else None

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        for request in self._pending:
            request.done.cancel()
        self._pending.clear()

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    answers = await self._call(loop, batch)
                except asyncio.CancelledError:
                    for request in batch:
                        request.done.cancel()
                    raise
                except Exception as error:
                    if len(batch) == 1:
                        self._settle(batch[0], error)
                    else:
                        await self._run_by_halves(loop, batch)
                else:
                    for request, answer in zip(batch, answers, strict=True):
                        self._settle(request, answer)

    async def _run_by_halves(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        """``batch`` raised: find the guilty requests by bisection. Each half runs as a batch;
        one that succeeds answers all its requests, one that raises is split again, and a
        request that raises alone gets its own error. Requests answered meanwhile (timed out:
        their client is gone) or past their deadline are not run again."""
        # Breadth first: an innocent half is answered before the guilty one's halves are run.
        parts = deque([batch[: len(batch) // 2], batch[len(batch) // 2 :]])
        while parts:
            part = [request for request in parts.popleft() if self._still_wanted(request)]
            if not part:
                continue
            try:
                answers = await self._call(loop, part)
            except asyncio.CancelledError:  # closing: nobody is left waiting on a dead batcher
                for request in [*part, *(request for rest in parts for request in rest)]:
                    request.done.cancel()
                raise
            except Exception as error:
                if len(part) == 1:
                    self._settle(part[0], error)
                else:
                    parts += [part[: len(part) // 2], part[len(part) // 2 :]]
            else:
                for request, answer in zip(part, answers, strict=True):
                    self._settle(request, answer)

    async def _call(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Request]
    ) -> list[Inference]:
        """One predict call in the inference thread, timed for ``stalled_for``."""
        self._call_started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._executor, _predict, self._model, batch)
        finally:
            self._call_started = None

    def _still_wanted(self, request: _Request) -> bool:
        if request.done.done():  # timed out: its client had its 504
            return False
        if time.perf_counter() - request.submitted >= self._timeout:  # its timer is due
            if request.timer is not None:
                request.timer.cancel()
            _expire(request)
            return False
        return True

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        items = 0
        pending = self._pending
        while pending and (not batch or items + len(pending[0].items) <= self._max_items):
            request = pending.popleft()
            if request.done.done():  # timed out before its turn
                continue
            batch.append(request)
            items += len(request.items)
        return batch

    def _settle(self, request: _Request, answer: Inference | BaseException) -> None:
        if request.timer is not None:
            request.timer.cancel()
        if request.done.done():  # timed out while its batch ran: the answer is dropped
            return
        if isinstance(answer, BaseException):
            request.done.set_exception(answer)
            return
        # Answered in time: observed once (a request refused, run again or answered too late
        # is not), and acknowledged once its rows are stored.
        self._latency.observe(answer.seconds)
        self._store(answer.rows).add_done_callback(
            lambda stored: _acknowledge(request.done, answer, stored)
        )


def _expire(request: _Request) -> None:
    if not request.done.done():
        request.done.set_exception(InferenceTimeout())


def _acknowledge(
    done: asyncio.Future[Inference], answer: Inference, stored: asyncio.Future[None]
) -> None:
    if done.done():  # the client went away meanwhile
        return
    if stored.cancelled():
        done.cancel()
    elif (error := stored.exception()) is not None:
        done.set_exception(error)
    else:
        done.set_result(answer)


def leaves(value: object):
    """Every number and string in `value` (a model_dump: dicts, lists, scalars)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def non_finite(value: object) -> bool:
    return any(isinstance(leaf, float) and not math.isfinite(leaf) for leaf in leaves(value))


def _has_nul(value: object) -> bool:
    return any(isinstance(leaf, str) and "\x00" in leaf for leaf in leaves(value))


def _predict(model: LoadedModel, batch: list[_Request]) -> list[Inference]:
    """In the inference thread: one predict call for the whole batch, then each request's
    ids, outputs and rows (input and output as JSON text, parsed by the database as jsonb)."""
    name, version = model.manifest.name, model.manifest.version
    inputs = [item for request in batch for item in request.items]
    try:
        outputs = model.predictor.predict(inputs)
    except BaseException as error:
        # Whatever the plug-in raised is its failure, never judged by its class as the service's
        # own errors are: a psycopg OperationalError from a model querying a database of its own
        # was answered as ours being away (a 503 and a retry), a DataError as the client's input,
        # an HTTPException with its status. Wrapped too: a StopIteration, which asyncio cannot
        # set on the awaiting future (the await would never end, and the model would answer no
        # request again), and a SystemExit or KeyboardInterrupt, the model's, not ours.
        raise ModelError(f"model {name!r} raised {type(error).__name__}") from error
    finished = time.perf_counter()
    output_schema = model.predictor.output_schema
    if len(outputs) != len(inputs) or not all(isinstance(o, output_schema) for o in outputs):
        # Checked here because the route answers without response_model re-validation.
        raise ModelError(f"model {name!r} returned outputs not matching its schema")
    answers, start = [], 0
    for request in batch:
        end = start + len(request.items)
        elapsed = finished - request.submitted  # queue wait + inference, as the timeout sees it
        ids = [uuid.uuid4() for _ in request.items]
        mine = outputs[start:end]
        # JSON would carry NaN as null (a required number gone), and PostgreSQL refuses a NUL:
        # the model's fault, never answered nor stored, unless the NUL came in with this
        # request's input (the database refuses it, a 422: the client's data). Raised for the
        # batch, which is then run again by halves, so only this one fails.
        nul_in = _has_nul([item.model_dump() for item in request.items])
        for output in mine:
            dump = output.model_dump()
            if non_finite(dump) or (not nul_in and _has_nul(dump)):
                raise ModelError(f"model {name!r} returned a non-finite number or a NUL")
        rows = [
            # By alias, as the API reads and answers them: a stored input can be sent again.
            (id_, name, version, request.request_id, item.model_dump_json(by_alias=True),
             output.model_dump_json(by_alias=True), elapsed * 1000)
            for id_, item, output in zip(ids, request.items, mine, strict=True)
        ]  # fmt: skip
        answers.append(Inference(ids, mine, rows, elapsed))
        start = end
    return answers
