"""The OpenAPI description of the operators' routes (merged into `openapi.document`)."""

from __future__ import annotations

import zoneinfo
from typing import Any, Final, get_args

import msgspec

from playproof.protocol import END_REASONS, MAX_INT, RejectReason
from playproof.server.params import MAX_RANGE_DAYS
from playproof.server.reports import REJECT_GROUPS, ImpressionOut
from playproof.stores import queries
from playproof.stores import verification_report as vr
from playproof.stores.rollup import DIMENSIONS
from playproof.stores.verdicts import DECIDED, PENDING
from playproof.verification import REASONS

DIMENSION_PARAMS: Final = DIMENSIONS
ID_SCHEMA: Final = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}
# params.parse_time: a date or an RFC 3339 time with its offset, from 1970 on (a stored
# time is never before the epoch). That `from` comes before `to`, and at most
# MAX_RANGE_DAYS apart, no JSON Schema can say: the description does.
TIME_SCHEMA: Final = {
    "type": "string",
    "anyOf": [{"format": "date"}, {"format": "date-time"}],
    "pattern": "^(19[7-9][0-9]|[2-9][0-9]{3})-",
    "description": "RFC 3339 (2026-11-01T00:00:00Z), or a date meaning its midnight in `tz`; "
    f"from 1970 on; `from` before `to`, at most {MAX_RANGE_DAYS} days apart",
}


class ImpressionItem(ImpressionOut):
    """An impression in a JSON page, with the route of its screenshot."""

    screenshot_url: str | None


class ImpressionPage(msgspec.Struct):
    """One page of impressions; pass `next_cursor` as `cursor` for the next."""

    impressions: list[ImpressionItem]
    next_cursor: str | None


class Operator(msgspec.Struct):
    """Who a token belongs to."""

    name: str


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema} | (
        {"description": description} if description else {}
    )


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


OBJECT: Final = {"type": "object"}
NDJSON_TYPE: Final = "application/x-ndjson"
ERRORS: Final = {
    "400": _err("a parameter is not what it must be: the message says what was expected"),
    "401": _err("missing or unknown token"),
    "403": _err("a device token, or a revoked operator token"),
    "429": _err("too many failed authentications from the address; see Retry-After"),
    "503": _err("the store cannot answer now"),
}
TIME_PARAMS: Final = [_q("from", TIME_SCHEMA, "start (included)"), _q("to", TIME_SCHEMA, "end")]
# The reports and statements count over a period, so they need both ends of it.
PERIOD: Final = [{**p, "required": True} for p in TIME_PARAMS]
FORMAT: Final = _q("format", {"type": "string", "enum": ["json", "csv", "ndjson"]}, "or Accept")
LIMIT: Final = _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
# An export streams the whole selection: its `limit` is any count (reports.impression_query).
EXPORT_LIMIT: Final = _q(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_INT},
    "at most 1000 for a JSON page; any count for a CSV or NDJSON export",
)
# Opaque: only a `next_cursor` the service gave for the same filters is accepted (else 400).
CURSOR: Final = _q(
    "cursor",
    {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    "`next_cursor` of the previous page",
)
# params.zone: the names the service's own time zone database knows, and UTC's spellings.
ZONES: Final = sorted(zoneinfo.available_timezones() | {"UTC", "Z", "Etc/UTC"})
TZ: Final = _q("tz", {"type": "string", "enum": ZONES}, "UTC (default) or an IANA time zone name")
END_REASON: Final = _q("end_reason", {"type": "string", "enum": list(END_REASONS)})
REJECT_REASON: Final = _q("reason", {"type": "string", "enum": list(get_args(RejectReason))})


def _group_by(names: tuple[str, ...], description: str = "") -> dict[str, Any]:
    """`group_by` as params.group_by reads it: comma-separated names, each at most once."""
    # At least one name: an empty list and a list of one empty name both travel as
    # `group_by=`, which the service refuses rather than guess between them.
    schema = {"type": "array", "items": {"type": "string", "enum": list(names)}, "minItems": 1}
    return _q("group_by", {**schema, "uniqueItems": True}, description) | {
        "style": "form",
        "explode": False,
    }


def _get(op_id: str, summary: str, params: list[dict[str, Any]], ok: dict[str, Any]) -> Any:
    return {
        "get": {
            "summary": summary,
            "operationId": op_id,
            "security": [{"operator": []}],
            "parameters": params,
            "responses": {"200": ok, **ERRORS},
        }
    }


def _put(
    op_id: str,
    summary: str,
    params: list[dict[str, Any]],
    body: dict[str, Any],
    answers: dict[str, Any],
) -> dict[str, Any]:
    too_big = {"413": _err("the body is too large"), "415": _err("another content type")}
    return {
        "summary": summary,
        "operationId": op_id,
        "security": [{"operator": []}],
        "parameters": params,
        "requestBody": {"required": True, "content": body},
        "responses": {**answers, **ERRORS, **too_big},
    }


def _tabular(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": schema},
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def paths() -> dict[str, Any]:
    """The operators' routes."""
    dims = [_q(n, ID_SCHEMA) for n in DIMENSION_PARAMS]
    status = _q("status", {"type": "string", "enum": ["valid", "partial"]})
    verification = _q("verification", {"type": "string", "enum": [PENDING, *DECIDED]})
    reason = _q(
        "verification_reason",
        {"type": "string", "enum": list(REASONS)},
        "plays whose reasons include this one",
    )
    not_found = {"404": _err("no such impression, or its screenshot is not uploaded")}
    shot = _get(
        "getScreenshot",
        "The proof screenshot of one impression",
        [
            _path_param("device_id", ID_SCHEMA),
            _path_param("journal_id", ID_SCHEMA),
            _path_param("seq", {"type": "integer", "minimum": 1, "maximum": MAX_INT}),
        ],
        {
            "description": "the image",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    )
    shot["get"]["responses"].update(not_found)
    device = _get(
        "getDevice",
        "One device's health in full",
        [_path_param("device_id", ID_SCHEMA)],
        _json_ok("health", OBJECT),
    )
    device["get"]["responses"]["404"] = _err("no such device")
    return {
        "/": {
            "get": {
                "summary": "The operators' dashboard (a web page; it asks for the token)",
                "operationId": "dashboard",
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/operator": _get(
            "getOperator",
            "Who the token belongs to",
            [],
            _json_ok("the operator", _ref("Operator")),
        ),
        "/v1/impressions": _get(
            "listImpressions",
            "Impressions by start time: a page as JSON, or a streamed CSV or NDJSON export",
            [
                *TIME_PARAMS,
                *dims,
                _q("journal_id", ID_SCHEMA),
                status,
                END_REASON,
                verification,
                reason,
                EXPORT_LIMIT,
                CURSOR,
                FORMAT,
            ],
            _tabular("impressions", _ref("ImpressionPage")),
        ),
        "/v1/impressions/{device_id}/{journal_id}/{seq}/screenshot": shot,
        "/v1/reports/delivery": _get(
            "deliveryReport",
            "Valid and partial plays, played seconds, mean quality per group (billing)",
            [
                *PERIOD,
                TZ,
                _group_by(queries.GROUPS, "dimensions, hour, day"),
                *dims,
                FORMAT,
            ],
            _tabular("the report", OBJECT),
        ),
        "/v1/reports/verification": _get(
            "verificationReport",
            "Valid plays verified, failed and pending per group; with `reason`, failures by "
            "reason (a play failing for several reasons counts under each)",
            [
                *PERIOD,
                TZ,
                _group_by(vr.GROUPS),
                *(_q(n, ID_SCHEMA) for n in vr.DIMENSIONS),
                FORMAT,
            ],
            _tabular("the report", OBJECT),
        ),
        "/v1/reports/rejects": _get(
            "rejectCounts",
            "Rejected records counted by reason, device, hour or day",
            [
                *TIME_PARAMS,
                TZ,
                _group_by(REJECT_GROUPS, "`reason` when absent"),
                REJECT_REASON,
                _q("device_id", ID_SCHEMA),
                FORMAT,
            ],
            _tabular("the counts", OBJECT),
        ),
        "/v1/rejects": _get(
            "listRejects",
            "Rejected records, newest first",
            [
                *TIME_PARAMS,
                REJECT_REASON,
                _q("device_id", ID_SCHEMA),
                LIMIT,
                CURSOR,
                _q("format", {"type": "string", "enum": ["json"]}),
            ],
            _json_ok("a page of rejects", OBJECT),
        ),
        "/v1/devices": _get(
            "listDevices",
            "Device health summaries by id: a page as JSON (`limit`, `cursor`, `next_cursor`); "
            "CSV and NDJSON export every device",
            [FORMAT, LIMIT, CURSOR],
            _tabular("devices", OBJECT),
        ),
        "/v1/devices/{device_id}": device,
        "/v1/live": _get(
            "live",
            "Records answered lately per interval, by result; connected screens; queued records",
            [
                _q("seconds", {"type": "integer", "minimum": 10, "maximum": 3600}),
                _q("step", {"type": "integer", "minimum": 1, "maximum": 300}),
            ],
            _json_ok("the series", OBJECT),
        ),
        **_billing_paths(),
        **_export_paths(),
        **_verification_paths(),
    }


def _verification_paths() -> dict[str, Any]:
    """Reading the catalog and the verifier's queue (server/catalogs.py).

    The catalog is written with `PUT /v1/catalog` and reference images with
    `PUT /v1/contents/{content_id}/reference` (docs/operators.md): their rules go past
    what JSON Schema says (references across entries, ISO 4217 currencies, no line
    breaks), so they are documented in words there and tested by tests/test_catalog.py
    and tests/server/test_verification.py rather than fuzzed from this document.
    """
    sha = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    content = _path_param("content_id", ID_SCHEMA)
    image = _get(
        "getReferenceImage",
        "One reference image of a content",
        [content, _path_param("sha256", sha)],
        {
            "description": "the image",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    )
    image["get"]["responses"]["404"] = _err("no such reference image of that content")
    catalog = _get(
        "getCatalog",
        "The catalog's active entries, as one canonical document",
        [],
        _json_ok("the catalog", OBJECT),
    )
    catalog["put"] = _put(
        "putCatalog",
        "Import a catalog document: merge it, or (replace=true) make the catalog exactly it",
        [_q("replace", {"type": "string", "enum": ["true", "false"]})],
        {"application/json": {"schema": OBJECT}},
        {"200": _json_ok("the changes, and the catalog's version after them", OBJECT)},
    )
    references = _get(
        "getReferences",
        "A content's reference images, each with the URL of its picture",
        [content],
        _json_ok("the references (none for an unknown content)", OBJECT),
    )
    binary = {"schema": {"type": "string", "format": "binary"}}
    references["put"] = _put(
        "putReference",
        "Keep an image as a reference of a content in the catalog",
        [content],
        {"image/png": binary, "image/jpeg": binary},
        {
            "200": _json_ok("known already", OBJECT),
            "201": _json_ok("kept", OBJECT),
            "404": _err("no such content in the catalog"),
        },
    )
    return {
        "/v1/catalog": catalog,
        "/v1/contents/{content_id}/reference": references,
        "/v1/contents/{content_id}/references/{sha256}": image,
        "/v1/verification": _get(
            "getVerification",
            "The verifier's queue: plays pending, the oldest one's arrival, the lag",
            [],
            _json_ok("the queue", OBJECT),
        ),
    }


def _billing_paths() -> dict[str, Any]:
    """The billing statement (server/statements.py) and its printable page."""
    billing = _get(
        "billingStatement",
        "A period's billing statement: a line per supplier, campaign and ad group, priced "
        "from the catalog; provisional until the period settles, then final, kept and "
        "answered byte for byte; corrections arrive as adjustments on the next statement",
        [
            *PERIOD,
            TZ,
            _q("supplier_id", ID_SCHEMA),
            _q("campaign_id", ID_SCHEMA),
        ],
        _json_ok("the statement; money and impressions as exact decimal strings", OBJECT),
    )
    billing["get"]["responses"]["409"] = _err("statements kept moving meanwhile: ask again")
    page = {
        "get": {
            "summary": "The printable billing statement, one supplier a page (a web page; it "
            "reads the API with the dashboard's token)",
            "operationId": "statementPage",
            "responses": {
                "200": {
                    "description": "HTML",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return {"/v1/reports/billing": billing, "/statement.html": page}


EXPORT_ID: Final = {"type": "integer", "minimum": 1, "maximum": MAX_INT}
SELLER_ID: Final = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}


def _export_paths() -> dict[str, Any]:
    """The buyer exports (server/exports.py): a new one is recorded before its first byte.

    An export request takes one of `since=last`, `from`/`to` or `export_id` (alone), and a
    DV360 one a seller: what JSON Schema cannot say, the words do, and the service's 400.
    """
    which = [
        _q("since", {"type": "string", "enum": ["last"]}, "every play not yet exported"),
        *TIME_PARAMS,
        _q("export_id", EXPORT_ID, "a past export again (nothing else may be given)"),
    ]
    not_found = {"404": _err("no such export, or one of the other buyer")}
    body = "the file; its id in X-Playproof-Export-Id, its counts in X-Playproof-Export-Plays "
    body += "and X-Playproof-Export-Skipped"
    files = {
        "dv360": ("exportDv360", "DV360 ad plays: batchCreate bodies, one a line", NDJSON_TYPE),
        "playout": ("exportPlayout", "A UK Playout digital CSV file", "text/csv"),
    }
    found: dict[str, Any] = {}
    for buyer, (op_id, summary, media) in files.items():
        seller = [_q("seller_id", SELLER_ID, "sellers/<id> (default: dv360_seller_id)")]
        seller = seller if buyer == "dv360" else []
        ok = {"description": body, "content": {media: {"schema": {"type": "string"}}}}
        found[f"/v1/exports/{buyer}"] = _get(op_id, summary, [*which, *seller], ok)
    export_id = _path_param("export_id", EXPORT_ID)
    found["/v1/exports/{export_id}"] = _get(
        "getExport", "What an export was asked and holds", [export_id], _json_ok("it", OBJECT)
    )
    found["/v1/exports/{export_id}/skipped"] = _get(
        "getExportSkipped",
        "The plays an export listed apart, with their reasons",
        [export_id, FORMAT],
        _tabular("the plays", OBJECT),
    )
    for path in found.values():
        path["get"]["responses"].update(not_found)
    # The evidence export (server/evidence.py): no ledger, a period always.
    evidence_ok = {
        "description": "one line per impression: its record as sealed, received_at, status "
        "and verification",
        "content": {NDJSON_TYPE: {"schema": {"type": "string"}}},
    }
    found["/v1/exports/evidence"] = _get(
        "exportEvidence",
        "Impressions that started in [from, to) as their devices sealed them (NDJSON)",
        PERIOD,
        evidence_ok,
    )
    return found


def schemas() -> dict[str, Any]:
    """The schemas the operators' routes name."""
    _, components = msgspec.json.schema_components(
        (ImpressionPage, Operator), ref_template="#/components/schemas/{name}"
    )
    return components
