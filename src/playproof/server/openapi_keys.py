"""The OpenAPI description of the device-key routes (server/keys.py; merged into the document)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from playproof.keylog import KeyLog
from playproof.protocol import MAX_INT
from playproof.server.keys import LOG_PAGE_MAX, EnrolBody, KeyBody

ID: Final = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}
KEY_ID: Final = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
# What JSON Schema can say of a key; that it hashes to the path's key id and is a canonical
# point of large order, the words say (and the 400).
KEY_RULES: Final = (
    " `public_key`: 64 lowercase hex digits, a canonical Ed25519 point of large order, "
    "whose SHA-256 begins with the path's `key_id` (else 400)."
)


class KeyOut(msgspec.Struct):
    """A key as operators see it; times RFC 3339 on the service's clock."""

    key_id: str
    public_key: str
    registered_at: str
    registered_by: str  # "device", or the operator's name
    revoked_at: str | None
    revoked_by: str | None
    active: bool


class DeviceKeys(msgspec.Struct):
    """A device's keys, revoked ones included, and its version-2 state."""

    device_id: str
    self_enrol: bool
    signatures_required: bool
    keys: list[KeyOut]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


def _ok(description: str, name: str) -> dict[str, Any]:
    return {"description": description, "content": _json(name)}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


DEVICE_ERRORS: Final = {
    "401": _err("missing or unknown token"),
    "403": _err("token revoked, or self-enrolment closed for this device by an operator"),
    "429": _err("over the device's request rate, or too many failed authentications"),
    "503": _err("the store cannot answer now"),
}
OPERATOR_ERRORS: Final = {
    "400": _err("a parameter is not what it must be: the message says what was expected"),
    "401": _err("missing or unknown token"),
    "403": _err("a device token, or a revoked operator token"),
    "404": _err("no such device, or no such key of it"),
    "429": _err("too many failed authentications from the address; see Retry-After"),
    "503": _err("the store cannot answer now"),
}
BODY_ERRORS: Final = {
    "400": _err("not the body described, or a key refused: the message says why"),
    "408": _err("the body did not arrive in time"),
    "413": _err("the body is too large"),
    "415": _err("another content type or encoding"),
}
FULL: Final = _err(
    "at most `max_device_keys` (4) active keys, a key id another device holds, or a revoked key"
)


def _op(op_id: str, summary: str, who: str, params: list[Any], **rest: Any) -> dict[str, Any]:
    return (
        {"summary": summary, "operationId": op_id, "security": [{who: []}]}
        | ({"parameters": params} if params else {})
        | rest
    )


def _body(name: str, description: str = "") -> dict[str, Any]:
    return {"required": True, "content": _json(name)} | (
        {"description": description} if description else {}
    )


def paths() -> dict[str, Any]:
    """The device-key routes."""
    device, key = _path("device_id", ID), _path("key_id", KEY_ID)
    registered = {"201": _ok("registered now", "KeyOut"), "200": _ok("held already", "KeyOut")}
    log_params = [
        {
            "name": "after",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
            "description": "entries numbered above this one (default 0: from the start)",
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": LOG_PAGE_MAX},
        },
    ]
    return {
        "/v1/devices/keys/{key_id}": {
            "put": _op(
                "putOwnKey",
                "A device registers its Ed25519 public key (PROTOCOL.md section 7)",
                "device",
                [key],
                requestBody=_body("KeyBody", KEY_RULES),
                responses={**registered, **DEVICE_ERRORS, **BODY_ERRORS, "409": FULL},
            )
        },
        "/v1/devices/{device_id}/keys": {
            "get": _op(
                "getDeviceKeys",
                "A device's keys, revoked ones included, its self-enrolment and whether it "
                "must sign",
                "operator",
                [device],
                responses={"200": _ok("the keys", "DeviceKeys"), **OPERATOR_ERRORS},
            )
        },
        "/v1/devices/{device_id}/keys/{key_id}": {
            "put": _op(
                "putDeviceKey",
                "An operator adds a key to a device (also when its self-enrolment is closed)",
                "operator",
                [device, key],
                requestBody=_body("KeyBody", KEY_RULES),
                responses={**registered, **OPERATOR_ERRORS, **BODY_ERRORS, "409": FULL},
            )
        },
        "/v1/devices/{device_id}/keys/{key_id}/revoke": {
            "post": _op(
                "revokeDeviceKey",
                "Revoke a key: records received from now on that it signed are refused",
                "operator",
                [device, key],
                responses={"200": _ok("the key, revoked", "KeyOut"), **OPERATOR_ERRORS},
            )
        },
        "/v1/devices/{device_id}/keys/lock": {
            "post": _op(
                "lockDeviceKeys",
                "Close a device's self-enrolment (`self_enrol: false`), or open it again",
                "operator",
                [device],
                requestBody=_body("EnrolBody"),
                responses={
                    "200": _ok("the device's keys", "DeviceKeys"),
                    **OPERATOR_ERRORS,
                    **BODY_ERRORS,
                },
            )
        },
        "/v1/devices/{device_id}/keys/require": {
            "post": _op(
                "requireSignatures",
                "Refuse a device's version-1 records (`bad_signature`) before it has a key",
                "operator",
                [device],
                responses={"200": _ok("the device's keys", "DeviceKeys"), **OPERATOR_ERRORS},
            )
        },
        "/v1/keys": {
            "get": _op(
                "keyLog",
                "The append-only key log, each entry chained to the one before by its hash: "
                "keep it (with its head) to check later that no key was slipped in",
                "operator",
                log_params,
                responses={
                    "200": _ok("the entries and the head (the last entry's hash)", "KeyLog"),
                    **OPERATOR_ERRORS,
                    "404": _err("the log has no entry `after`"),
                },
            )
        },
    }


def schemas() -> dict[str, Any]:
    """The schemas the key routes name."""
    _, components = msgspec.json.schema_components(
        (KeyBody, EnrolBody, KeyOut, DeviceKeys, KeyLog),
        ref_template="#/components/schemas/{name}",
    )
    components["KeyBody"]["properties"]["public_key"]["pattern"] = "^[0-9a-f]{64}$"
    return components
