"""Which models this service serves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.errors import ProblemError, problem_responses
from service.predictors import LoadedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelInfo(BaseModel):
    name: str
    version: str
    framework: str
    description: str
    artifact_sha256: str
    loaded_at: datetime
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelInfo]


def describe(model: LoadedModel) -> ModelInfo:
    manifest = model.manifest
    return ModelInfo(
        name=manifest.name,
        version=manifest.version,
        framework=manifest.framework,
        description=manifest.description,
        artifact_sha256=manifest.sha256,
        loaded_at=model.loaded_at,
        input_schema=model.predictor.input_schema.model_json_schema(),
        output_schema=model.predictor.output_schema.model_json_schema(),
    )


def unknown_model(name: str) -> ProblemError:
    return ProblemError(
        404, f"no model named {name!r} is served", problem_type="urn:plinth:problem:unknown-model"
    )


@router.get("", response_model=ModelList, responses=problem_responses(500))
async def list_models(request: Request) -> ModelList:
    return ModelList(models=[describe(model) for model in request.app.state.registry])


@router.get("/{name}", response_model=ModelInfo, responses=problem_responses(404, 422, 500))
async def get_model(name: str, request: Request) -> ModelInfo:
    model = request.app.state.registry.get(name)
    if model is None:
        raise unknown_model(name)
    return describe(model)
