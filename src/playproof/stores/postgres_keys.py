"""PostgreSQL: device keys and the key log (stores/keys.py decides).

Several commit lanes and several service nodes may write at once, so every key
write takes one advisory transaction lock first (per schema): under it the last
log entry read is still the last when the next is appended (two appends never
fork the chain; the entry number's primary key would refuse a fork anyway), and
the checks (active keys, a key id held elsewhere) see every earlier key write.
Key writes are rare (a device's first start, an operator's action): one lock
for them all costs nothing that matters.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from playproof import keylog
from playproof.keylog import Event, KeyEntry
from playproof.stores import keys as k
from playproof.stores.base import Credential, DeviceInfo, DeviceKey

Conn = AsyncConnection[TupleRow]

_LOCK_KEYS: Final = "SELECT pg_advisory_xact_lock(hashtext('playproof:keys:' || current_schema()))"
_DEVICE_BY_ID: Final = k.device_sql("device_id", "postgres")
_DEVICE_BY_TOKEN: Final = k.device_sql("token_hash", "postgres", token=True)


def _q(statement: str) -> bytes:
    return k.sql(statement, "postgres").encode()


async def _rows(conn: Conn, statement: str, params: tuple[Any, ...]) -> list[TupleRow]:
    return await (await conn.execute(_q(statement), params)).fetchall()


async def device(conn: Conn, device_id: str) -> DeviceInfo | None:
    """One device with its keys and version-2 state."""
    row = await (await conn.execute(_DEVICE_BY_ID.encode(), (device_id,))).fetchone()
    return k.device_of(row) if row else None


async def credential(conn: Conn, token_hash: str) -> Credential | None:
    """The device holding a token hash, with its keys, and the stored hash."""
    row = await (await conn.execute(_DEVICE_BY_TOKEN.encode(), (token_hash,))).fetchone()
    return Credential(k.device_of(row), row[7]) if row else None


async def _lock_and_state(conn: Conn, device_id: str) -> tuple[bool, bool]:
    await conn.execute(_LOCK_KEYS)
    found = await _rows(conn, k.DEVICE_STATE, (device_id,))
    if not found:
        raise k.no_device(device_id)
    return bool(found[0][0]), bool(found[0][1])


async def _append(
    conn: Conn,
    at: int,
    event: Event,
    device_id: str,
    actor: str,
    key_id: str | None = None,
    public_key: str | None = None,
) -> KeyEntry:
    last = await _rows(conn, k.LAST_ENTRY, ())
    prev = k.entry_of(last[0]) if last else None
    entry = keylog.append(prev, at, event, device_id, actor, key_id, public_key)
    await conn.execute(_q(k.INSERT_ENTRY), k.entry_row(entry))
    return entry


async def register(
    conn: Conn,
    device_id: str,
    key_id: str,
    public_key: str,
    at: int,
    actor: str,
    by_operator: bool,
    max_keys: int,
) -> k.Registered:
    """Register a key (the log entry and the device's signature requirement with it)."""
    async with conn.transaction():
        self_enrol, _ = await _lock_and_state(conn, device_id)
        same_id = await _rows(conn, k.KEY_BY_ID, (key_id,))
        active = int((await _rows(conn, k.ACTIVE_KEYS, (device_id,)))[0][0])
        if not k.must_create(
            device_id, key_id, public_key, by_operator, self_enrol, same_id, active, max_keys
        ):
            return "same"
        await conn.execute(_q(k.INSERT_KEY), (device_id, key_id, public_key, at, actor))
        await conn.execute(_q(k.REQUIRE), (True, device_id))
        await _append(conn, at, k.key_event(by_operator), device_id, actor, key_id, public_key)
    return "created"


async def revoke(conn: Conn, device_id: str, key_id: str, at: int, actor: str) -> bool:
    """Revoke a key from `at` on; False when it was revoked already (nothing logged)."""
    async with conn.transaction():
        await _lock_and_state(conn, device_id)
        held = k.held_key(await _rows(conn, k.KEY_BY_ID, (key_id,)), device_id, key_id)
        if held.revoked_at is not None:
            return False
        await conn.execute(_q(k.REVOKE_KEY), (at, actor, device_id, key_id))
        await _append(conn, at, "revoked", device_id, actor, key_id)
    return True


async def set_self_enrol(conn: Conn, device_id: str, open_: bool, at: int, actor: str) -> bool:
    """Open or close a device's self-enrolment; False when it already was so."""
    async with conn.transaction():
        self_enrol, _ = await _lock_and_state(conn, device_id)
        if self_enrol == open_:
            return False
        await conn.execute(_q(k.SELF_ENROL), (open_, device_id))
        await _append(conn, at, k.enrol_event(open_), device_id, actor)
    return True


async def require(conn: Conn, device_id: str, at: int, actor: str) -> bool:
    """Refuse a device's version-1 records from now on; False when they already were."""
    async with conn.transaction():
        _, required = await _lock_and_state(conn, device_id)
        if required:
            return False
        await conn.execute(_q(k.REQUIRE), (True, device_id))
        await _append(conn, at, "signatures_required", device_id, actor)
    return True


async def list_keys(conn: Conn, device_id: str) -> list[DeviceKey]:
    """Every key a device holds or held, oldest first; NotFound for an unknown device."""
    async with conn.transaction():
        if not await _rows(conn, k.DEVICE_STATE, (device_id,)):
            raise k.no_device(device_id)
        return [k.key_of(row) for row in await _rows(conn, k.DEVICE_KEYS, (device_id,))]


async def log_page(conn: Conn, after: int, limit: int) -> list[KeyEntry]:
    """The log's entries after entry number `after`, at most `limit`."""
    return [k.entry_of(row) for row in await _rows(conn, k.LOG_PAGE, (after, limit))]


async def log_entry(conn: Conn, entry: int) -> KeyEntry | None:
    """One entry of the log."""
    found = await _rows(conn, k.ONE_ENTRY, (entry,))
    return k.entry_of(found[0]) if found else None
