"""Device keys over HTTP (PROTOCOL.md section 7): a device registers its own, operators manage.

`PUT /v1/devices/keys/{key_id}` takes the device's token; the routes under
`/v1/devices/{device_id}/keys` and `GET /v1/keys` take an operator's. Every
write goes to the store with its key-log entry in one transaction, then drops
the device from this process's token cache, so that its next request sees the
change at once (a key acknowledged here verifies the records signed right after;
a revocation here refuses the next record). Changes made elsewhere (the CLI,
another service node) reach this process within the cache time (2 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from playproof import keylog
from playproof.errors import EnvelopeError, NotFound, ProtocolError
from playproof.protocol import MAX_INT, encode
from playproof.server.bodies import read_body, require_content_type
from playproof.server.callers import device_of, operator_of, service_of
from playproof.server.formats import rfc3339
from playproof.server.params import Params, id_value
from playproof.signing import check_public_key
from playproof.stores.base import DeviceInfo, DeviceKey

if TYPE_CHECKING:
    from playproof.server.service import Service

JSON: Final = "application/json"
# A key body is one 64-digit field: anything near this is not one.
MAX_KEY_BODY: Final = 1024
# `GET /v1/keys` answers the whole log in one piece up to this many entries (a few
# hundred bytes each: a fleet of a few tens of thousands of screens), then in pages.
LOG_PAGE_MAX: Final = 100_000
DEVICE_ACTOR: Final = "device"


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    """`PUT .../keys/{key_id}`: the public key the id names."""

    public_key: str


class EnrolBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/devices/{device_id}/keys/lock`: whether the device may register keys itself."""

    self_enrol: bool


def key_view(key: DeviceKey) -> dict[str, Any]:
    """A key as operators see it; times RFC 3339, on the service's clock."""
    return {
        "key_id": key.key_id,
        "public_key": key.public_key,
        "registered_at": rfc3339(key.registered_at),
        "registered_by": key.registered_by,
        "revoked_at": rfc3339(key.revoked_at),
        "revoked_by": key.revoked_by,
        "active": key.revoked_at is None,
    }


def keys_view(device: DeviceInfo) -> dict[str, Any]:
    """A device's keys and version-2 state (also part of `GET /v1/devices/{device_id}`)."""
    return {
        "self_enrol": device.self_enrol,
        "signatures_required": device.signatures_required,
        "keys": [key_view(key) for key in device.keys],
    }


def _json(payload: object, status: int = 200) -> Response:
    return Response(encode(payload), status_code=status, media_type=JSON)


async def _body(service: Service, request: Request, kind: type[Any]) -> Any:
    require_content_type(request, (JSON,))
    data = await read_body(request, MAX_KEY_BODY, service.limits.body_timeout_s)
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        fields = ", ".join(kind.__struct_fields__)
        raise EnvelopeError(f"expected a JSON object with {fields} only: {exc}") from None


async def _register(
    service: Service, request: Request, device_id: str, actor: str, by_operator: bool
) -> Response:
    key_id = request.path_params["key_id"]
    body: KeyBody = await _body(service, request, KeyBody)
    check_public_key(body.public_key, key_id)
    result = await service.store.register_key(
        device_id,
        key_id,
        body.public_key,
        service.clock(),
        actor,
        by_operator,
        service.limits.max_device_keys,
    )
    service.auth.forget_device(device_id)
    key = next(k for k in await service.store.list_keys(device_id) if k.key_id == key_id)
    return _json(key_view(key), 201 if result == "created" else 200)


async def put_own_key(request: Request) -> Response:
    """PUT /v1/devices/keys/{key_id}: a device registers its public key (201, or 200 again)."""
    service = service_of(request)
    device = await device_of(service, request)
    return await _register(service, request, device.device_id, DEVICE_ACTOR, False)


def _device_id(request: Request) -> str:
    return id_value("device_id", request.path_params["device_id"])


async def _device_keys(service: Service, device_id: str) -> Response:
    device = await service.store.get_device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r} is registered")
    return _json({"device_id": device_id, **keys_view(device)})


async def get_device_keys(request: Request) -> Response:
    """GET /v1/devices/{device_id}/keys: every key the device holds or held."""
    service = service_of(request)
    await operator_of(service, request)
    return await _device_keys(service, _device_id(request))


async def put_device_key(request: Request) -> Response:
    """PUT /v1/devices/{device_id}/keys/{key_id}: an operator adds a key (even when the
    device's self-enrolment is closed)."""
    service = service_of(request)
    operator = await operator_of(service, request)
    return await _register(service, request, _device_id(request), operator.name, True)


async def post_revoke_key(request: Request) -> Response:
    """POST /v1/devices/{device_id}/keys/{key_id}/revoke: records received from now on that
    this key signed are refused; those received before stay good."""
    service = service_of(request)
    operator = await operator_of(service, request)
    device_id, key_id = _device_id(request), request.path_params["key_id"]
    await service.store.revoke_key(device_id, key_id, service.clock(), operator.name)
    service.auth.forget_device(device_id)
    key = next(k for k in await service.store.list_keys(device_id) if k.key_id == key_id)
    return _json(key_view(key))


async def post_lock(request: Request) -> Response:
    """POST /v1/devices/{device_id}/keys/lock: close (or open again) self-enrolment."""
    service = service_of(request)
    operator = await operator_of(service, request)
    device_id = _device_id(request)
    body: EnrolBody = await _body(service, request, EnrolBody)
    await service.store.set_self_enrol(device_id, body.self_enrol, service.clock(), operator.name)
    service.auth.forget_device(device_id)
    return await _device_keys(service, device_id)


async def post_require(request: Request) -> Response:
    """POST /v1/devices/{device_id}/keys/require: refuse the device's version-1 records,
    before it has any key."""
    service = service_of(request)
    operator = await operator_of(service, request)
    device_id = _device_id(request)
    await service.store.require_signatures(device_id, service.clock(), operator.name)
    service.auth.forget_device(device_id)
    return await _device_keys(service, device_id)


def _after(params: Params) -> int:
    value = params.get("after")
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_INT:
        raise ProtocolError(f"expected `after` as an entry number from 0, got {value[:40]!r}")
    return int(value)


async def get_key_log(request: Request) -> Response:
    """GET /v1/keys: the key log as a buyer keeps it ({"entries": [...], "head": ...}); past
    `limit` entries, `next_after` names the page that follows."""
    service = service_of(request)
    await operator_of(service, request)
    params = Params(request.query_params, ("after", "limit"))
    after, limit = _after(params), params.limit(LOG_PAGE_MAX, LOG_PAGE_MAX)
    entries = await service.store.key_log(after, limit)
    before = await service.store.key_log_entry(after) if after else None
    if after and before is None:
        raise NotFound(f"the key log has no entry {after}")
    following = entries[-1].entry if len(entries) == limit else None
    return Response(keylog.document(entries, before, following), media_type=JSON)
