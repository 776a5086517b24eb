"""Property test: generated requests against the app's own OpenAPI, in process.

schemathesis' pytest fixtures (``from_fixture``) do not work with pytest 9 (they set the
removed ``Function._nodeid``), so the schema's Hypothesis strategies are driven directly.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from service.app import create_app
from service.config import Settings

# An oversized batch is rejected with 413 (documented); schemathesis' default list of
# "rejection" statuses for schema-violating data does not include it.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": ["400", "404", "405", "413", "422"],
            }
        }
    }
)


@pytest.mark.parametrize(
    ("mode", "operations"),
    [
        # Every operation gets valid data; only those with constrained inputs (a body, a
        # typed path parameter) can be given invalid data.
        (schemathesis.GenerationMode.POSITIVE, 9),
        (schemathesis.GenerationMode.NEGATIVE, 2),
    ],
)
def test_api_conforms_to_its_openapi(settings: Settings, mode, operations: int) -> None:
    app = create_app(settings.model_copy(update={"models": ["iris"]}))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    seen_operations: set[str] = set()

    @given(case=schema.as_strategy(mode))
    @hypothesis_settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case) -> None:
        seen_operations.add(case.operation.label)
        # All default checks: no 5xx, documented status codes, content types, headers and
        # bodies; invalid data rejected and valid data accepted.
        case.call_and_validate()

    try:
        check()
    finally:
        app.state.engine.dispose()
    assert len(seen_operations) >= operations, seen_operations
