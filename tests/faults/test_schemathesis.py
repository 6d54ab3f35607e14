"""schemathesis against our own OpenAPI document, on a real server: no 5xx, nothing hangs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from playproof.server import openapi
from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, provision

schema = schemathesis.openapi.from_dict(json.loads(openapi.document()))


@pytest.fixture(scope="module")
def target(shared_db: str) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A real server, and a device token and an operator token for the authenticated routes."""
    # A generous rate: schemathesis sends hundreds of requests as one device, and as
    # many refused ones from one address (a device token on operator routes).
    limits = ["device_rate=100000", "device_burst=100000", "auth_failures=100000"]
    with ServerProcess(shared_db, *(f"--limit={limit}" for limit in limits)) as proc:
        tokens = {
            "device": provision(shared_db, "scr-fuzz"),
            "operator": operator_token(shared_db, "ops-fuzz"),
        }
        yield proc, tokens


@pytest.mark.parametrize("who", ["device", "operator"])
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx_and_every_answer_matches_the_schema(
    case: Case, target: tuple[ServerProcess, dict[str, str]], who: str
) -> None:
    """Every documented route, fuzzed with a device token and with an operator token."""
    server, tokens = target
    token = tokens[who]
    response = case.call(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code < 500, response.text
    case.validate_response(
        response,
        checks=[
            schemathesis.checks.response_schema_conformance,
            schemathesis.checks.status_code_conformance,
        ],
    )


def test_the_service_still_serves_after_the_fuzzing(
    target: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, _ = target
    with client(server.url) as http:
        assert http.get("/healthz").status_code == 200
