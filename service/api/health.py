"""Operational endpoints: liveness, readiness, version, metrics."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import State

from service.database import answer_deadline, database_state
from service.errors import DATABASE_RETRY_AFTER_SECONDS, ProblemError, problem_responses
from service.metrics import render_metrics
from service.release import ReleaseInfo

router = APIRouter(tags=["operations"])

_READINESS_RESPONSES = problem_responses(500, 503)
_READINESS_RESPONSES[503]["content"]["application/problem+json"]["schema"] = {
    "$ref": "#/components/schemas/ReadinessProblem"
}


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str]


@router.get("/healthz", response_model=Liveness, responses=problem_responses(500))
async def healthz() -> Liveness:
    """Liveness: the process answers. Touches nothing external."""
    return Liveness()


def _migrations_check(revision: str | None, head: str | None, known: frozenset[str]) -> str:
    if revision == head:
        return "ok"
    if revision is not None and revision not in known:
        # A newer release migrated (expand/contract) and this one was rolled back to: its
        # schema is a superset of ours, which releases promise to tolerate.
        return f"ok: ahead, at {revision} (this release's head is {head})"
    return f"failed: at {revision or 'empty database'}, expected {head}"


def _models_check(state: State) -> str:
    """Every model loaded, and none wedged: a plug-in whose predict call never returns answers
    each request with a 504 while the process looks healthy."""
    failures = []
    missing = [name for name in state.settings.models if state.registry.get(name) is None]
    if missing:
        failures.append(f"not loaded: {', '.join(missing)}")
    stalled = {
        name: seconds
        for name, batcher in state.batchers.items()
        if (seconds := batcher.stalled_for()) is not None
    }
    if stalled:
        waited = ", ".join(f"{name} for {seconds:.1f} s" for name, seconds in stalled.items())
        limit = state.settings.predict_timeout_seconds
        failures.append(f"a predict call unanswered: {waited} (limit {limit:g} s)")
    return "failed: " + "; ".join(failures) if failures else "ok"


@router.get("/readyz", response_model=Readiness, responses=_READINESS_RESPONSES)
async def readyz(request: Request) -> Readiness:
    """Ready when the database answers and takes writes, its migrations are at this release's
    head (or ahead: a newer release's, rolled back from) and every model is loaded and
    answering."""
    state = request.app.state
    settings = state.settings
    checks: dict[str, str] = {}
    # A stalled server (storage hung, VM paused) still accepts TCP and never enforces its
    # statement timeout: without a deadline of our own, the probe would hang with it.
    deadline = answer_deadline(settings)
    try:
        async with asyncio.timeout(deadline):
            database = await run_in_threadpool(database_state, state.engine)
    except TimeoutError:
        checks["database"] = f"failed: no answer within {deadline:g} s"
        checks["migrations"] = "unknown: database unavailable"
    except SQLAlchemyError as error:
        checks["database"] = f"failed: {type(error).__name__}"
        checks["migrations"] = "unknown: database unavailable"
    else:
        if database.read_only:
            checks["database"] = (
                "failed: read-only (a standby, or default_transaction_read_only is on)"
            )
        elif database.missing_grants:
            checks["database"] = (
                f"failed: this role lacks {' and '.join(database.missing_grants)} on predictions"
                " (grants)"
            )
        else:
            checks["database"] = "ok"
        checks["migrations"] = _migrations_check(
            database.revision, state.head_revision, state.known_revisions
        )
    checks["models"] = _models_check(state)
    failed = [name for name, result in checks.items() if not result.startswith("ok")]
    if failed:
        raise ProblemError(
            503,
            f"not ready: {', '.join(failed)}",
            problem_type="urn:plinth:problem:not-ready",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
            checks=checks,
        )
    return Readiness(checks=checks)


@router.get("/version", response_model=ReleaseInfo, responses=problem_responses(500))
async def version(request: Request) -> ReleaseInfo:
    """The running release: version, git revision and build time."""
    return request.app.state.release


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **problem_responses(500),
    },
)
def metrics() -> Response:
    """Prometheus exposition, summed over all Gunicorn workers."""
    payload, content_type = render_metrics()
    return Response(payload, media_type=content_type)
