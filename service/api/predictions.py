"""Predict with a model (every prediction persisted before answering) and read one back.

One ``POST /v1/models/<name>/predict`` route is generated per loaded model so the OpenAPI
document carries each model's exact input and output schemas; a catch-all route behind them
answers 404 for unknown names. No ``from __future__ import annotations`` here: FastAPI must see
the generated request/response classes as real objects, not strings.
"""

import asyncio
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import to_json

from service.api.json_body import parse_json_body
from service.api.models import unknown_model
from service.config import Settings
from service.context import current_request_id
from service.database import answer_deadline, get_prediction
from service.errors import ProblemError, problem_responses
from service.inference_batcher import InferenceTimeout, non_finite
from service.prediction_writer import NoAnswer
from service.predictors import LoadedModel, ModelRegistry

# 422 covers a body that is not JSON too, 415 one sent with a content coding (gzip...): see
# service.api.json_body.
_PREDICT_RESPONSES = problem_responses(413, 415, 422, 500, 503, 504)


class PredictionRecord(BaseModel):
    id: uuid.UUID
    model_name: str
    model_version: str
    request_id: str
    input: dict[str, Any]
    output: dict[str, Any]
    latency_ms: float
    created_at: datetime


class PredictSchemas(NamedTuple):
    """A model's request and response body classes (the route and the OpenAPI document need
    the same ones)."""

    request: type[BaseModel]
    response: type[BaseModel]


def predict_schemas(registry: ModelRegistry, max_batch_size: int) -> dict[str, PredictSchemas]:
    """Each model's body classes, by model name. Named after the model, not after the
    plug-in's classes: two plug-ins may well both call theirs ``Input``."""
    return {
        model.name: PredictSchemas(_request_model(model, max_batch_size), _response_model(model))
        for model in registry
    }


def predict_path(name: str) -> str:
    return f"/v1/models/{name}/predict"


def _class_prefix(model: LoadedModel) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]+", model.name))


def _request_model(model: LoadedModel, max_batch_size: int) -> type[BaseModel]:
    item = model.predictor.input_schema
    return create_model(
        f"{_class_prefix(model)}PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        # The length is checked before any item is validated, so an oversized batch of junk
        # costs no time; that error becomes a 413 (payload too large), not a generic 422.
        inputs=(list[item], Field(min_length=1, max_length=max_batch_size)),
    )


def _oversized_batch(error: RequestValidationError, limit: int) -> ProblemError | None:
    for detail in error.errors():
        if detail["type"] == "too_long" and tuple(detail["loc"]) == ("body", "inputs"):
            size = detail.get("ctx", {}).get("actual_length") or f"more than {limit}"
            return ProblemError(
                413,
                f"batch of {size} exceeds the limit of {limit} inputs",
                problem_type="urn:plinth:problem:batch-too-large",
            )
    return None


def _response_model(model: LoadedModel) -> type[BaseModel]:
    prefix = _class_prefix(model)
    result = create_model(
        f"{prefix}Prediction", id=(uuid.UUID, ...), output=(model.predictor.output_schema, ...)
    )
    return create_model(
        f"{prefix}PredictResponse",
        model=(str, ...),
        model_version=(str, ...),
        request_id=(str, ...),
        predictions=(list[result], ...),
    )


def _add_predict_route(
    router: APIRouter, model: LoadedModel, request_model: type[BaseModel], settings: Settings
) -> None:
    name, version = model.manifest.name, model.manifest.version

    async def predict(request: Request) -> Response:
        try:
            body = await parse_json_body(request, request_model)
        except RequestValidationError as error:
            raise _oversized_batch(error, settings.max_batch_size) or error from None
        batch = body.inputs  # type: ignore[attr-defined]
        if any(non_finite(item.model_dump()) for item in batch):
            # JSON's extensions Infinity and NaN parse as floats: the model would see them,
            # and the record would keep null instead.
            raise ProblemError(
                422,
                "inputs must not hold NaN or Infinity",
                problem_type="urn:plinth:problem:non-finite-input",
            )
        request_id = current_request_id() or uuid.uuid4().hex
        # Inference runs off the event loop (a model may be slow or CPU-bound), batched with
        # concurrent requests, then the rows are group-committed with those of concurrent
        # requests: the answer comes only after the COMMIT, so an acknowledged prediction is
        # never lost. A thread cannot be killed: on timeout the model's result is dropped and
        # nothing is stored.
        try:
            answer = await request.app.state.batchers[name].submit(batch, request_id)
        except InferenceTimeout:
            raise ProblemError(
                504,
                f"model {name!r} did not answer within {settings.predict_timeout_seconds}s",
                problem_type="urn:plinth:problem:prediction-timeout",
            ) from None
        # The outputs were validated by the model's schema already, so they are serialised
        # directly (pydantic-core's JSON encoder) instead of validated again by response_model.
        payload = {
            "model": name,
            "model_version": version,
            "request_id": request_id,
            "predictions": [
                {"id": id_, "output": output}
                for id_, output in zip(answer.ids, answer.outputs, strict=True)
            ],
        }
        return Response(to_json(payload), media_type="application/json")

    router.add_api_route(
        predict_path(name),
        predict,
        methods=["POST"],
        # Both bodies are documented by service.openapi (the route parses and answers them
        # itself, so FastAPI knows neither).
        responses=_PREDICT_RESPONSES,
        summary=f"Predict with {name}",
        description=model.manifest.description or None,
        operation_id=f"predict_{name.replace('-', '_')}",
    )


def build_router(
    registry: ModelRegistry, schemas: dict[str, PredictSchemas], settings: Settings
) -> APIRouter:
    router = APIRouter(tags=["predictions"])
    read_deadline = answer_deadline(settings)
    for model in registry:
        _add_predict_route(router, model, schemas[model.name].request, settings)

    # Documented as "any name but the served ones", so a client generating requests from the
    # OpenAPI document (schemathesis) never sends a served name here without a body. Only in
    # the document: at run time a served name never reaches this route.
    served = "|".join(re.escape(model.manifest.name) for model in registry)
    name_schema = {"pattern": f"^(?!(?:{served})$)"} if served else None

    @router.post("/v1/models/{name}/predict", responses=problem_responses(404, 422, 500))
    async def predict_unknown_model(
        name: Annotated[str, Path(json_schema_extra=name_schema)],
    ) -> None:
        """Registered after the per-model routes, so it only sees names nobody serves."""
        raise unknown_model(name)

    @router.get(
        "/v1/predictions/{prediction_id}",
        response_model=PredictionRecord,
        responses=problem_responses(404, 422, 500, 503),
    )
    async def read_prediction(prediction_id: uuid.UUID, request: Request) -> PredictionRecord:
        """A stored prediction. An id that is not a UUID is a 422, an unknown one a 404."""
        # A stalled server never answers (nor enforces its statement timeout), and nothing
        # interrupts psycopg's blocking wait in a thread. So the request stops waiting at the
        # deadline (the database's 503, as for a prediction) and leaves the thread to end when
        # the server answers; its slot among the 40 threads sync routes share is freed at once,
        # so /metrics is not queued behind stalled reads. Threads left so hold at most the
        # pool's connections: any further read fails within the pool's timeout.
        try:
            async with asyncio.timeout(read_deadline):
                row = await run_in_threadpool(
                    get_prediction, request.app.state.engine, prediction_id
                )
        except TimeoutError:
            raise NoAnswer("the database did not answer in time") from None
        if row is None:
            raise ProblemError(
                404,
                f"no prediction with id {prediction_id}",
                problem_type="urn:plinth:problem:unknown-prediction",
            )
        return PredictionRecord(**row)

    return router
