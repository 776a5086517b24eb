"""RFC 9457 problem details for every 4xx/5xx, and their description in the OpenAPI document."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.context import current_request_id
from service.head import allowed_with_head
from service.inference_batcher import ModelError
from service.prediction_writer import WRITES_REFUSED

PROBLEM_MEDIA_TYPE = "application/problem+json"
# How long clients should wait before retrying while the database is away: about one
# pool pre-ping/reconnect cycle, short enough for a restart or fail-over.
DATABASE_RETRY_AFTER_SECONDS = 5
# A 422 lists this many field errors at most: a batch of junk (up to MAX_BATCH_SIZE inputs)
# must not turn into a response of megabytes. The rest are counted in `errors_omitted`.
MAX_LISTED_ERRORS = 20
logger = logging.getLogger("plinth.errors")


class Problem(BaseModel):
    type: str = Field(default="about:blank", description="URI reference naming the problem type")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="the request path")
    request_id: str | None = None


class FieldError(BaseModel):
    field: str = Field(description="dotted location, e.g. body.inputs.0.petal_width_cm")
    message: str
    type: str


class ValidationProblem(Problem):
    errors: list[FieldError] = Field(description=f"the first {MAX_LISTED_ERRORS} field errors")
    errors_omitted: int = Field(default=0, description="how many more errors were not listed")


class ReadinessProblem(Problem):
    checks: dict[str, str] = Field(
        description="check name -> 'ok' (perhaps followed by ': ' and a note) or why it failed"
    )


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        problem_type: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problem_type = problem_type
        self.headers = headers
        self.extensions = extensions


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    instance: str | None = None,
    problem_type: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": problem_type,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": current_request_id(),
        **extensions,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def database_unavailable_response(
    instance: str | None, detail: str = "the database is unavailable; retry later"
) -> JSONResponse:
    return problem_response(
        503,
        detail,
        instance=instance,
        problem_type="urn:plinth:problem:database-unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def internal_error_response(instance: str | None) -> JSONResponse:
    # Deliberately generic: the trace goes to the log (with the request id), never to clients.
    return problem_response(500, "internal error; quote the request id", instance=instance)


def _field_errors(details: Sequence[Any]) -> list[dict[str, str]]:
    # Only location, message and type: echoing the rejected input could leak payload data.
    return [
        {
            "field": ".".join(str(part) for part in item.get("loc", ())) or "body",
            "message": str(item.get("msg", "invalid")),
            "type": str(item.get("type", "value_error")),
        }
        for item in details
    ]


def install_exception_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, error: ProblemError) -> JSONResponse:
        return problem_response(
            error.status,
            error.detail,
            instance=request.url.path,
            problem_type=error.problem_type,
            headers=error.headers,
            **error.extensions,
        )

    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else None
        headers = error.headers
        if headers and "Allow" in headers:
            headers = {**headers, "Allow": allowed_with_head(headers["Allow"])}
        return problem_response(
            error.status_code, detail, instance=request.url.path, headers=headers
        )

    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        details = error.errors()
        errors = _field_errors(details[:MAX_LISTED_ERRORS])
        summary = "; ".join(f"{item['field']}: {item['message']}" for item in errors[:5])
        return problem_response(
            422,
            f"invalid request: {summary}",
            instance=request.url.path,
            problem_type="urn:plinth:problem:invalid-request",
            errors=errors,
            errors_omitted=max(0, len(details) - MAX_LISTED_ERRORS),
        )

    async def on_database_error(request: Request, error: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", type(error).__name__)
        return database_unavailable_response(request.url.path)

    async def on_writes_refused(request: Request, error: Exception) -> JSONResponse:
        # A standby after a fail-over, or lost grants: the operator's to fix, so 503 with a
        # retry (not a 500 "bug"), and the class named in the log (not the database's message).
        logger.warning("database refuses writes: %s", type(error).__name__)
        return database_unavailable_response(
            request.url.path, "the database does not accept writes now; retry later"
        )

    async def on_unstorable_input(request: Request, error: Exception) -> JSONResponse:
        # The input passed the model's schema but PostgreSQL refuses to store it (e.g. a \u0000
        # in a string, which jsonb cannot hold): the client's data, so 422, not a server fault.
        # The database's message is not echoed: it may quote the payload.
        logger.info("input refused by the database: %s", type(error).__name__)
        return problem_response(
            422,
            "the input cannot be stored (e.g. a \\u0000 character in a string)",
            instance=request.url.path,
            problem_type="urn:plinth:problem:unstorable-input",
        )

    async def on_database_refusal(request: Request, error: Exception) -> JSONResponse:
        # Any other error the database or its driver raised: a table that is not there (not
        # migrated), a grant lost on reads, a connection option libpq refuses. The operator's to
        # fix, like an outage: 503 with a retry, the classes in the log, no traceback.
        # SQLAlchemy wraps psycopg's error; the wrapped one is named, and judged as when raised
        # directly where that matters (input the database cannot store).
        cause = getattr(error, "orig", None) or error
        if isinstance(cause, psycopg.DataError):
            return await on_unstorable_input(request, cause)
        logger.error("database error: %s (%s)", type(error).__name__, type(cause).__name__)
        return database_unavailable_response(
            request.url.path, "the database cannot serve this request now; retry later"
        )

    async def on_model_error(request: Request, error: Exception) -> JSONResponse:
        # The model's failure, whatever it raised (its class and traceback, the cause's, are
        # in the log line): the operator's or the model author's to look into.
        logger.error("model failure: %s", error, exc_info=error)
        return internal_error_response(request.url.path)

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        return internal_error_response(request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    # psycopg's own classes: the prediction writer talks to psycopg directly (no SQLAlchemy).
    for database_error in (
        OperationalError,
        InterfaceError,
        PoolTimeoutError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
    ):
        app.add_exception_handler(database_error, on_database_error)
    for refused in WRITES_REFUSED:
        app.add_exception_handler(refused, on_writes_refused)
    app.add_exception_handler(psycopg.DataError, on_unstorable_input)
    # The most specific class registered handles an error, so these only catch the rest.
    for database_error in (DBAPIError, psycopg.Error):
        app.add_exception_handler(database_error, on_database_refusal)
    app.add_exception_handler(ModelError, on_model_error)
    app.add_exception_handler(Exception, on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries documenting each status as a problem document."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        schema = {422: "ValidationProblem"}.get(status, "Problem")
        entry: dict[str, Any] = {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
        if status == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait before retrying",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            }
        documented[status] = entry
    return documented
