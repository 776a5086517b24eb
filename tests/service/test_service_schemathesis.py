"""Property test: generated requests against the app's own OpenAPI, in process."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.config import Settings

# A module-level app is what schemathesis' pytest integration needs; it is built lazily
# from the same fixtures as the other tests.
schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def api_schema(settings: Settings):
    app = create_app(settings.model_copy(update={"models": ["iris"]}))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.engine.dispose()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_openapi(case) -> None:
    # All default checks: no 5xx, status codes, content types, headers and bodies as
    # documented, invalid data rejected and valid data accepted.
    case.call_and_validate()
