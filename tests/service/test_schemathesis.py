"""Property-based run over the served /openapi.json: no input makes the service answer 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture(scope="module")
def fuzz_target(service):
    return service, service.add_caller(name="schemathesis", concurrency=16)


@pytest.fixture(scope="module")
def api_schema(fuzz_target):
    service, _ = fuzz_target
    return schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, fuzz_target):
    service, token = fuzz_target
    case.call_and_validate(
        base_url=service.base_url,
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error],
        timeout=60,
    )
