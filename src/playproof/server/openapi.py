"""The OpenAPI document for every HTTP route, with schemas generated from the wire types."""

from __future__ import annotations

import functools
from typing import Any, Literal

import msgspec

from playproof import protocol
from playproof.protocol import Ack, AckMessage, Id, Millis, Record, Status
from playproof.server import openapi_keys, openapi_operators


class BatchEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """An envelope as a device sends it (section 3)."""

    device_id: Id
    sent_at: Millis
    impressions: list[Record]


class Error(msgspec.Struct):
    """What every 4xx and 5xx answer carries."""

    error: str


class Health(msgspec.Struct, forbid_unknown_fields=True):
    """The answer of /healthz: healthy or not, and no internals (the service logs why)."""

    status: Literal["ok", "unavailable"]
    store: str | None = None  # the store's kind: sqlite or postgresql
    pipeline: str | None = None  # the pipeline's kind, when there is one
    # Only on a simulated clock: mode, speed, anchor_ms, epoch_ms, now_ms.
    clock: dict[str, Any] | None = None


class StoredBlob(msgspec.Struct):
    """The answer to a screenshot upload."""

    sha256: str
    size: int


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


AUTH_ERRORS = {
    "401": _error("missing or unknown token"),
    "403": _error("token revoked, or data for another device"),
    "429": _error(
        "over the device's request rate, the screenshot quota, or the failed "
        "authentications allowed from the address; see Retry-After"
    ),
}
BODY_ERRORS = {
    "400": _error("not a well-formed body; nothing stored"),
    "408": _error("the body did not arrive in time"),
    "413": _error("over the size limits"),
    "415": _error("another content type or encoding"),
    "503": _error(
        "the store cannot commit now, or the service is overloaded; nothing acknowledged, "
        "send again after Retry-After"
    ),
}
# JSON Schema's `integer` admits 15000.0 too; the wire contract's integers have no fraction.
INTEGERS = " Integers are written without a fraction (15000, not 15000.0)."
# Content-Encoding describes the body, it is not a parameter of its own: documented as one,
# it let clients send `gzip` over a plain body, which the service refuses with 400.
GZIPPED = (
    " The body may be gzip-compressed, sent with `Content-Encoding: gzip` (400 when it is "
    "not gzip; 415 for any other encoding)."
)


def _paths() -> dict[str, Any]:
    return {
        "/v1/impressions/batch": {
            "post": {
                "summary": "Upload a batch of impression records",
                "operationId": "postBatch",
                "security": [{"device": []}],
                "requestBody": {
                    "description": "The envelope (PROTOCOL.md section 3)." + INTEGERS + GZIPPED,
                    "required": True,
                    "content": _json("BatchEnvelope"),
                },
                "responses": {
                    "200": {
                        "description": "one ack per record, in order, after commit",
                        "content": _json("AckMessage"),
                    },
                    **AUTH_ERRORS,
                    **BODY_ERRORS,
                },
            }
        },
        "/v1/devices/status": {
            "post": {
                "summary": "Report device health (not billed)",
                "operationId": "postStatus",
                "security": [{"device": []}],
                "requestBody": {
                    "description": "The device's health." + INTEGERS + GZIPPED,
                    "required": True,
                    "content": _json("Status"),
                },
                "responses": {"204": {"description": "stored"}, **AUTH_ERRORS, **BODY_ERRORS},
            }
        },
        "/v1/screenshots/{sha256}": {
            "put": {
                "summary": "Upload a proof screenshot, stored once by its SHA-256",
                "operationId": "putScreenshot",
                "security": [{"device": []}],
                "parameters": [
                    {
                        "name": "sha256",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    }
                ],
                "requestBody": {
                    "description": "The image, whose SHA-256 must be the path's (else 400)."
                    + GZIPPED,
                    "required": True,
                    "content": {
                        "image/png": {"schema": {"type": "string", "format": "binary"}},
                        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "201": {"description": "stored now", "content": _json("StoredBlob")},
                    "200": {"description": "already stored", "content": _json("StoredBlob")},
                    **AUTH_ERRORS,
                    **BODY_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Whether the service and its store answer",
                "operationId": "healthz",
                "responses": {
                    "200": {"description": "healthy", "content": _json("Health")},
                    "503": {
                        "description": "the store or the pipeline does not answer",
                        "content": _json("Health"),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (also without a token on `serve --metrics-listen`)",
                "operationId": "metrics",
                "security": [{"operator": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("missing or unknown token"),
                    "403": _error("a device token, or a revoked operator token"),
                    "429": _error("too many failed authentications from the address"),
                    "503": _error("the store cannot check the token now"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "the OpenAPI document"}},
            }
        },
    }


def _schemas() -> dict[str, Any]:
    types = (BatchEnvelope, AckMessage, Ack, Status, Error, Health, StoredBlob)
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    # The checksum is UNSET only on a record not yet sealed; on the wire it is required.
    components["Record"]["required"].append("checksum")
    return components


@functools.cache
def document() -> bytes:
    """The OpenAPI 3.1 document, as JSON bytes."""
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "playproof ingest service",
            "version": f"protocol v{protocol.VERSION}",
            "description": "Proof-of-play impression ingest; see PROTOCOL.md. The stream "
            "transport is the WebSocket GET /v1/stream, which OpenAPI does not describe.",
        },
        "paths": {**_paths(), **openapi_operators.paths(), **openapi_keys.paths()},
        "components": {
            "schemas": {
                **_schemas(),
                **openapi_operators.schemas(),
                **openapi_keys.schemas(),
            },
            "securitySchemes": {
                "device": {"type": "http", "scheme": "bearer"},
                "operator": {"type": "http", "scheme": "bearer", "description": "ppo_ token"},
            },
        },
    }
    return msgspec.json.encode(doc)
