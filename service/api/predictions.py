"""Predict with a model (every prediction persisted before answering) and read one back.

One ``POST /v1/models/<name>/predict`` route is generated per loaded model so the OpenAPI
document carries each model's exact input and output schemas; a catch-all route behind them
answers 404 for unknown names. No ``from __future__ import annotations`` here: FastAPI must see
the generated request/response classes as real objects, not strings.
"""

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from service.api.models import unknown_model
from service.config import Settings
from service.context import current_request_id
from service.database import get_prediction, insert_predictions
from service.errors import ProblemError, problem_responses
from service.metrics import PREDICTION_LATENCY
from service.predictors import LoadedModel, ModelRegistry

# 400: a body that is not even decodable (FastAPI's own parse error), 422: invalid content.
_PREDICT_RESPONSES = problem_responses(400, 413, 422, 500, 503, 504)


class PredictionRecord(BaseModel):
    id: uuid.UUID
    model_name: str
    model_version: str
    request_id: str
    input: dict[str, Any]
    output: dict[str, Any]
    latency_ms: float
    created_at: datetime


def _request_model(model: LoadedModel, max_batch_size: int) -> type[BaseModel]:
    item = model.predictor.input_schema
    return create_model(
        f"{item.__name__}PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        # maxItems is documented but enforced in the route, so an oversized batch is a 413
        # (payload too large) rather than a generic 422.
        inputs=(
            list[item],
            Field(min_length=1, json_schema_extra={"maxItems": max_batch_size}),
        ),
    )


def _response_model(model: LoadedModel) -> type[BaseModel]:
    output = model.predictor.output_schema
    result = create_model(f"{output.__name__}Result", id=(uuid.UUID, ...), output=(output, ...))
    return create_model(
        f"{output.__name__}PredictResponse",
        model=(str, ...),
        model_version=(str, ...),
        request_id=(str, ...),
        predictions=(list[result], ...),
    )


def _add_predict_route(router: APIRouter, model: LoadedModel, settings: Settings) -> None:
    request_model = _request_model(model, settings.max_batch_size)
    response_model = _response_model(model)
    name, version = model.manifest.name, model.manifest.version
    predictor = model.predictor

    async def predict(body: request_model, request: Request) -> response_model:  # type: ignore[valid-type]
        batch = body.inputs
        if len(batch) > settings.max_batch_size:
            raise ProblemError(
                413,
                f"batch of {len(batch)} exceeds the limit of {settings.max_batch_size} inputs",
                problem_type="urn:plinth:problem:batch-too-large",
            )
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            # Off the event loop; a thread cannot be killed, so on timeout it finishes in the
            # background while the client gets a 504 and nothing is persisted.
            outputs = await asyncio.wait_for(
                loop.run_in_executor(request.app.state.executor, predictor.predict, batch),
                settings.predict_timeout_seconds,
            )
        except TimeoutError:
            raise ProblemError(
                504,
                f"model {name!r} did not answer within {settings.predict_timeout_seconds}s",
                problem_type="urn:plinth:problem:prediction-timeout",
            ) from None
        elapsed = time.perf_counter() - started
        PREDICTION_LATENCY.labels(name).observe(elapsed)
        if len(outputs) != len(batch):
            raise RuntimeError(f"model {name!r} returned {len(outputs)} outputs for {len(batch)}")
        request_id = current_request_id() or uuid.uuid4().hex
        rows = [
            {
                "id": uuid.uuid4(),
                "model_name": name,
                "model_version": version,
                "request_id": request_id,
                "input": item.model_dump(mode="json"),
                "output": output.model_dump(mode="json"),
                "latency_ms": elapsed * 1000,
            }
            for item, output in zip(batch, outputs, strict=True)
        ]
        # Answer only after COMMIT: an acknowledged prediction is never lost.
        await loop.run_in_executor(
            request.app.state.executor, insert_predictions, request.app.state.engine, rows
        )
        return response_model(
            model=name,
            model_version=version,
            request_id=request_id,
            predictions=[{"id": row["id"], "output": row["output"]} for row in rows],
        )

    router.add_api_route(
        f"/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        response_model=response_model,
        responses=_PREDICT_RESPONSES,
        summary=f"Predict with {name}",
        description=model.manifest.description or None,
        operation_id=f"predict_{name.replace('-', '_')}",
    )


def build_router(registry: ModelRegistry, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["predictions"])
    for model in registry:
        _add_predict_route(router, model, settings)

    @router.post("/v1/models/{name}/predict", responses=problem_responses(404, 422, 500))
    async def predict_unknown_model(name: str) -> None:
        """Registered after the per-model routes, so it only sees names nobody serves."""
        raise unknown_model(name)

    @router.get(
        "/v1/predictions/{prediction_id}",
        response_model=PredictionRecord,
        responses=problem_responses(404, 422, 500, 503),
    )
    def read_prediction(prediction_id: uuid.UUID, request: Request) -> PredictionRecord:
        """A stored prediction. An id that is not a UUID is a 422, an unknown one a 404."""
        row = get_prediction(request.app.state.engine, prediction_id)
        if row is None:
            raise ProblemError(
                404,
                f"no prediction with id {prediction_id}",
                problem_type="urn:plinth:problem:unknown-prediction",
            )
        return PredictionRecord(**row)

    return router
