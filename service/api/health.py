"""Operational endpoints: liveness, readiness, version, metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from service.database import current_revision
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


@router.get("/readyz", response_model=Readiness, responses=_READINESS_RESPONSES)
def readyz(request: Request) -> Readiness:
    """Ready when the database answers, migrations are at head and every model is loaded."""
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        revision = current_revision(state.engine)
    except SQLAlchemyError as error:
        checks["database"] = f"failed: {type(error).__name__}"
        checks["migrations"] = "unknown: database unavailable"
    else:
        checks["database"] = "ok"
        checks["migrations"] = (
            "ok"
            if revision == state.head_revision
            else f"failed: at {revision or 'empty database'}, expected {state.head_revision}"
        )
    missing = [name for name in state.settings.models if state.registry.get(name) is None]
    checks["models"] = "ok" if not missing else f"failed: not loaded: {', '.join(missing)}"
    failed = [name for name, result in checks.items() if result != "ok"]
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
