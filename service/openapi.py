"""Finish the generated OpenAPI document: problem schemas and the X-Request-ID header."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.errors import Problem, ReadinessProblem, ValidationProblem

_REQUEST_ID_HEADER = {
    "description": "the request id (from X-Request-ID when supplied, else generated)",
    "required": True,
    "schema": {"type": "string"},
}


def install_openapi(app: FastAPI, *, body_models: Sequence[type[BaseModel]] = ()) -> None:
    """``body_models``: request bodies a route parses itself (``service.api.json_body``),
    whose schemas FastAPI therefore does not know."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, problem_schemas = models_json_schema(
            [(model, "serialization") for model in (Problem, ValidationProblem, ReadinessProblem)],
            ref_template="#/components/schemas/{model}",
        )
        _, body_schemas = models_json_schema(
            [(model, "validation") for model in body_models],
            ref_template="#/components/schemas/{model}",
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(problem_schemas.get("$defs", {}))
        schemas.update(body_schemas.get("$defs", {}))
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    response.setdefault("headers", {})["X-Request-ID"] = _REQUEST_ID_HEADER
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
