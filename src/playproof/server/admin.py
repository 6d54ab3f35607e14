"""Operators' actions on a store (the CLI calls these): devices, health, schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from playproof.errors import EnvelopeError, NotFound
from playproof.protocol import check_id as protocol_check_id
from playproof.rules import DEFAULT_POLICY, Policy
from playproof.server.auth import hash_token, new_token
from playproof.server.ingest import wall_clock_ms
from playproof.server.sequences import device_sequences, evicted_count
from playproof.stores import open_store
from playproof.stores.base import DeviceInfo, Store


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    """A store, opened (and migrated) for the length of the block."""
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def check_id(value: str, what: str) -> str:
    """`value` if it is a protocol id, else a ValueError saying what an id is."""
    try:
        return protocol_check_id(value, what)
    except EnvelopeError:
        raise ValueError(
            f"expected {what} of 1 to 64 characters of A-Z a-z 0-9 . _ : -, got {value!r}"
        ) from None


async def add_device(store: Store, device_id: str, store_id: str) -> str:
    """Register a device and return its new bearer token (shown once, stored as a hash)."""
    device = DeviceInfo(
        check_id(device_id, "a device id"), check_id(store_id, "a store id"), wall_clock_ms(), None
    )
    token = new_token()
    await store.add_device(device, hash_token(token))
    return token


async def rotate_device(store: Store, device_id: str) -> str:
    """Give a device a new bearer token and return it; the old one stops working."""
    token = new_token()
    await store.rotate_device(device_id, hash_token(token))
    return token


async def revoke_device(store: Store, device_id: str) -> None:
    """Revoke a device's token."""
    await store.revoke_device(device_id, wall_clock_ms())


async def device_health(
    store: Store, device_id: str, now_ms: int | None = None, policy: Policy = DEFAULT_POLICY
) -> dict[str, Any]:
    """Registration, latest status and sequence health of one device."""
    device = await store.get_device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r} is registered")
    now = wall_clock_ms() if now_ms is None else now_ms
    status = await store.latest_status(device_id)
    health: dict[str, Any] = {
        "device_id": device.device_id,
        "store_id": device.store_id,
        "created_at": device.created_at,
        "revoked_at": device.revoked_at,
        "status": None,
        "evicted_total": 0,
        "evicted_ranges": [],
    }
    if status is not None:
        health["status"] = msgspec.to_builtins(status.status)
        health["status_received_at"] = status.received_at
        health["evicted_total"] = evicted_count(status.evicted_ranges)
        health["evicted_ranges"] = [list(r) for r in status.evicted_ranges]
    evicted = status.evicted_ranges if status is not None else ()
    health["sequences"] = device_sequences(await store.journals(device_id), now, policy, evicted)
    return health
