"""Predict with a model (every prediction persisted before answering) and read one back.

One ``POST /v1/models/<name>/predict`` route is generated per loaded model so the OpenAPI
document carries each model's exact input and output schemas; a catch-all route behind them
answers 404 for unknown names. No ``from __future__ import annotations`` here: FastAPI must see
the generated request/response classes as real objects, not strings.
"""

import asyncio
import re
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import to_json

from service.api.models import unknown_model
from service.config import Settings
from service.context import current_request_id
from service.database import get_prediction
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


def _infer(
    model: LoadedModel, batch: list[BaseModel], request_id: str, started: float
) -> tuple[list[uuid.UUID], list[BaseModel], list[tuple[Any, ...]]]:
    """In the executor: inference, then the rows to store (ids, outputs, rows)."""
    name = model.manifest.name
    outputs = model.predictor.predict(batch)
    elapsed = time.perf_counter() - started  # queue wait + inference, as the timeout sees it
    PREDICTION_LATENCY.labels(name).observe(elapsed)
    output_schema = model.predictor.output_schema
    if len(outputs) != len(batch) or not all(isinstance(o, output_schema) for o in outputs):
        # Checked here because the route answers without response_model re-validation.
        raise RuntimeError(f"model {name!r} returned outputs not matching its schema")
    ids = [uuid.uuid4() for _ in batch]
    version, latency_ms = model.manifest.version, elapsed * 1000
    # input/output as JSON text straight from pydantic-core: the database parses it as jsonb.
    rows = [
        (id_, name, version, request_id, item.model_dump_json(), output.model_dump_json(),
         latency_ms)
        for id_, item, output in zip(ids, batch, outputs, strict=True)
    ]  # fmt: skip
    return ids, outputs, rows


def _add_predict_route(router: APIRouter, model: LoadedModel, settings: Settings) -> None:
    request_model = _request_model(model, settings.max_batch_size)
    response_model = _response_model(model)
    name, version = model.manifest.name, model.manifest.version

    async def predict(body: request_model, request: Request) -> Response:  # type: ignore[valid-type]
        batch = body.inputs
        if len(batch) > settings.max_batch_size:
            raise ProblemError(
                413,
                f"batch of {len(batch)} exceeds the limit of {settings.max_batch_size} inputs",
                problem_type="urn:plinth:problem:batch-too-large",
            )
        request_id = current_request_id() or uuid.uuid4().hex
        state = request.app.state
        # Inference runs off the event loop (a model may be slow or CPU-bound). A thread
        # cannot be killed: on timeout its result is simply dropped, and as the write below
        # only happens once inference returned in time, a 504 never stores anything.
        inference = asyncio.get_running_loop().run_in_executor(
            state.executor, _infer, model, batch, request_id, time.perf_counter()
        )
        try:
            ids, outputs, rows = await asyncio.wait_for(inference, settings.predict_timeout_seconds)
        except TimeoutError:
            raise ProblemError(
                504,
                f"model {name!r} did not answer within {settings.predict_timeout_seconds}s",
                problem_type="urn:plinth:problem:prediction-timeout",
            ) from None
        # Group commit with concurrent requests; returns only after our rows' COMMIT, so an
        # acknowledged prediction is never lost. Bounded by the statement timeout.
        await state.prediction_writer.write(rows)
        # The outputs were validated by the model's schema already, so they are serialised
        # directly (pydantic-core's JSON encoder) instead of validated again by response_model.
        payload = {
            "model": name,
            "model_version": version,
            "request_id": request_id,
            "predictions": [
                {"id": id_, "output": output} for id_, output in zip(ids, outputs, strict=True)
            ],
        }
        return Response(to_json(payload), media_type="application/json")

    router.add_api_route(
        f"/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        response_model=response_model,  # documents the 200; not applied to a Response
        responses=_PREDICT_RESPONSES,
        summary=f"Predict with {name}",
        description=model.manifest.description or None,
        operation_id=f"predict_{name.replace('-', '_')}",
    )


def build_router(registry: ModelRegistry, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["predictions"])
    for model in registry:
        _add_predict_route(router, model, settings)

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
