"""Property-based run over the served /openapi.json: no input makes the service answer 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture(scope="module")
def fuzz_target(service):
    return service, service.add_caller(name="schemathesis", concurrency=16)


@pytest.fixture(scope="module")
def api_schema(fuzz_target):
    service, _ = fuzz_target
    return schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")


def test_no_server_errors(fuzz_target, api_schema):
    """Every operation, a bounded number of generated cases each. Driven through hypothesis
    directly rather than schemathesis' pytest plugin, which breaks on new pytest releases."""
    service, token = fuzz_target
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def no_5xx(case):
            case.call_and_validate(
                base_url=service.base_url,
                headers={"Authorization": f"Bearer {token}"},
                checks=[not_a_server_error],
                timeout=60,
            )

        no_5xx()
