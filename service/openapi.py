"""Finish the generated OpenAPI document: the bodies routes handle themselves, the problem
schemas and the X-Request-ID header."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import count
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service.api.predictions import PredictSchemas
from service.errors import Problem, ReadinessProblem, ValidationProblem

_REFERENCE = "#/components/schemas/"
_REQUEST_ID_HEADER = {
    "description": "the request id (from X-Request-ID when supplied, else generated)",
    "required": True,
    "schema": {"type": "string"},
}
_PROBLEMS = (Problem, ValidationProblem, ReadinessProblem)


def install_openapi(app: FastAPI, *, predict_schemas: Mapping[str, PredictSchemas]) -> None:
    """``predict_schemas``: by route path, the bodies a route parses and answers itself
    (``service.api.json_body``), which FastAPI therefore does not know."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        references, definitions = _own_schemas(predict_schemas, taken=schemas)
        schemas.update(definitions)
        # problem_responses names the problem schemas as their classes are named; the pass
        # names them otherwise when a plug-in has a class of the same name.
        paths = _moved(
            document.get("paths", {}),
            {_REFERENCE + model.__name__: references[model]["$ref"] for model in _PROBLEMS},
        )
        for path, bodies in predict_schemas.items():
            operation = paths[path]["post"]
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": references[bodies.request]}},
            }
            operation["responses"]["200"]["content"] = {
                "application/json": {"schema": references[bodies.response]}
            }
        for operations in paths.values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    response.setdefault("headers", {})["X-Request-ID"] = _REQUEST_ID_HEADER
        document["paths"] = paths
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _own_schemas(
    predict_schemas: Mapping[str, PredictSchemas], *, taken: Mapping[str, Any]
) -> tuple[dict[type[BaseModel], dict[str, str]], dict[str, Any]]:
    """The schemas FastAPI did not generate: each class's reference, and the definitions.

    One pass over all of them, so pydantic names apart the plug-ins' classes that share a
    name (two plug-ins' ``Input``, one called ``Problem``); then any name FastAPI's document
    already gives another schema (a plug-in class called ``Readiness``) is moved aside."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "serialization") for model in _PROBLEMS
    ]
    for bodies in predict_schemas.values():
        wanted += [(bodies.request, "validation"), (bodies.response, "serialization")]
    references, definitions = models_json_schema(wanted, ref_template=_REFERENCE + "{model}")
    definitions = definitions.get("$defs", {})
    moves: dict[str, str] = {}
    for name, schema in definitions.items():
        if name in taken and taken[name] != schema:
            free = next(
                f"{name}{n}" for n in count(2) if f"{name}{n}" not in taken | definitions.keys()
            )
            moves[_REFERENCE + name] = _REFERENCE + free
    definitions = {
        moves.get(_REFERENCE + name, _REFERENCE + name).removeprefix(_REFERENCE): schema
        for name, schema in _moved(definitions, moves).items()
    }
    by_class = {model: reference for (model, _), reference in _moved(references, moves).items()}
    return by_class, definitions


def _moved(node: Any, moves: Mapping[str, str]) -> Any:
    """A copy of ``node`` whose references in ``moves`` point where it says."""
    if isinstance(node, dict):
        return {
            key: moves.get(value, value) if key == "$ref" else _moved(value, moves)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_moved(value, moves) for value in node]
    return node
