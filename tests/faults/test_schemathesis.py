"""schemathesis, with every check it has, against our own OpenAPI document on a real server."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.parameters import ParameterLocation

from playproof.errors import ProtocolError
from playproof.server import openapi, params
from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, provision

# Writing the catalog and its reference images is not fuzzed from the document: a valid
# catalog obeys rules JSON Schema cannot state (references across entries, ISO 4217
# currencies, no line breaks) and a reference must be a decodable image of a booked
# content. tests/test_catalog.py (hypothesis) and tests/server/test_verification.py test
# those routes; they stay in the document, so that a 405's `Allow` is checked against it.
schema = (
    schemathesis.openapi.from_dict(json.loads(openapi.document()))
    .exclude(method="PUT", path_regex="^/v1/(catalog|contents/)")
    # Registering a key is not fuzzed either: a valid key hashes to the path's key id and is
    # a canonical point of large order, which no schema says; tests/server/test_keys.py
    # drives those routes with the protocol's vectors and real keys.
    .exclude(method="PUT", path_regex="^/v1/devices/([^/]+/)?keys/")
)

load_all_checks()
EVERY_CHECK = CHECKS.get_all_names()
DAY_MS = 86_400_000


@schema.hook
def map_case(context: schemathesis.HookContext, case: Case) -> Case:
    """Valid requests made valid also in what JSON Schema cannot say (the spec says it in
    words, and the service answers 400 for each): the rest of the request is left as drawn."""
    _http_level_headers_dropped(case)
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    body = getattr(case.body, "data", case.body)  # schemathesis wraps binary bodies
    if case.operation.path == "/v1/screenshots/{sha256}" and isinstance(body, bytes):
        # The path names the body by its SHA-256.
        case.path_parameters = {"sha256": hashlib.sha256(body).hexdigest()}
    if isinstance(case.body, dict):
        # JSON Schema's integer admits 15000.0; the wire writes integers without a fraction
        # (PROTOCOL.md, and the request bodies' description), and msgspec refuses the rest.
        case.body = _integral(case.body)
    if case.operation.path in ("/v1/exports/dv360", "/v1/exports/playout"):
        case.query = _one_export(case.operation.path, dict(case.query or {}))
    if case.query:
        # A cursor is only what the previous page gave for the same filters.
        case.query.pop("cursor", None)
        _order_time_range(case.query)
        # A JSON page holds at most 1000 impressions; an export any number.
        page = (
            case.operation.path == "/v1/impressions" and case.query.get("format", "json") == "json"
        )
        if page and int(case.query.get("limit", 1)) > 1000:
            case.query["limit"] = 1000
    return case


# Headers HTTP itself frames the message with: drawn at random (an empty Content-Length,
# say) they make the request malformed, and uvicorn answers its own plain-text 400 before
# the service sees it. That answer is the HTTP server's, not the document's.
_FRAMING = frozenset(("content-length", "transfer-encoding", "host", "connection", "upgrade"))
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _http_level_headers_dropped(case: Case) -> None:
    if not case.headers:
        return
    case.headers = {
        name: value
        for name, value in case.headers.items()
        if _TOKEN.fullmatch(name) and name.lower() not in _FRAMING
    }


def _one_export(path: str, query: dict[str, Any]) -> dict[str, Any]:
    """A buyer export asks one thing (docs/operators.md): a past one by `export_id` alone,
    `since=last`, or a range; a new DV360 one names its seller (this server has no default)."""
    if "export_id" in query:
        return {"export_id": query["export_id"]}
    if "since" in query or not ("from" in query or "to" in query):
        query = {**{k: v for k, v in query.items() if k not in ("from", "to")}, "since": "last"}
    if path.endswith("dv360"):
        query.setdefault("seller_id", "8675309")
    return query


def _integral(value: Any) -> Any:
    """`value` with every integral float as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _order_time_range(query: dict[str, Any]) -> None:
    """`from` before `to`, at most params.MAX_RANGE_DAYS apart (rewritten only when not)."""
    start, end, tz = query.get("from"), query.get("to"), query.get("tz")
    if not isinstance(start, str) or not isinstance(end, str):
        return
    try:
        zone = params.zone(tz if isinstance(tz, str) else None)
        start_ms = params.parse_time("from", start, zone)
        end_ms = params.parse_time("to", end, zone)
    except ProtocolError:
        return  # the service's 400 is the answer the checks must see
    if start_ms < end_ms <= start_ms + params.MAX_RANGE_DAYS * DAY_MS:
        return
    low, high = sorted((start_ms, end_ms))
    low = max(low, high - DAY_MS)
    if low == high:
        low, high = (low - 1000, high) if low >= 1000 else (low, high + 1000)
    query["from"], query["to"] = _rfc3339(low), _rfc3339(high)


def _rfc3339(ms: int) -> str:
    return (params.EPOCH + timedelta(milliseconds=ms)).isoformat()


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


def test_every_check_schemathesis_has_is_run() -> None:
    """No check is left out: each is enabled in the schema's configuration."""
    checks = schema.config.checks_config_for(operation=None, phase=None)
    assert {"negative_data_rejection", "positive_data_acceptance", "ignored_auth"} <= set(
        EVERY_CHECK
    )
    assert all(checks.get_by_name(name=name).enabled for name in EVERY_CHECK)


@pytest.mark.parametrize("who", ["device", "operator"])
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_what_the_document_says(
    case: Case, target: tuple[ServerProcess, dict[str, str]], who: str
) -> None:
    """Every documented route, fuzzed with a device token and with an operator token, each
    answer judged by every check: no 5xx, documented codes, bodies, types and headers,
    invalid data refused, valid data accepted, undocumented methods 405 with Allow,
    authentication enforced."""
    server, tokens = target
    # Authorization is the only header the document declares: a case drawn invalid in its
    # headers lacks it or garbles it on purpose, and our token would undo that.
    drawn_without_auth = case.meta is not None and case.meta.is_negative_at(
        ParameterLocation.HEADER
    )
    headers = {} if drawn_without_auth else {"Authorization": f"Bearer {tokens[who]}"}
    case.call_and_validate(base_url=server.url, headers=headers, timeout=30)


def test_the_service_still_serves_after_the_fuzzing(
    target: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, _ = target
    with client(server.url) as http:
        assert http.get("/healthz").status_code == 200
