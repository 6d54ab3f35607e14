"""SQLite: device keys and the key log, run on the store's threads (stores/keys.py decides).

Every write runs in the single writer's `BEGIN IMMEDIATE` transaction: nothing
else writes meanwhile, so the log's last entry read here is still the last one
when the next is appended, and the checks see every earlier key write.
"""

from __future__ import annotations

import sqlite3

from playproof import keylog
from playproof.keylog import Event, KeyEntry
from playproof.stores import keys as k
from playproof.stores.base import Credential, DeviceInfo, DeviceKey


def device(conn: sqlite3.Connection, device_id: str) -> DeviceInfo | None:
    """One device with its keys and version-2 state."""
    row = conn.execute(k.device_sql("device_id", "sqlite"), (device_id,)).fetchone()
    return k.device_of(row) if row else None


def credential(conn: sqlite3.Connection, token_hash: str) -> Credential | None:
    """The device holding a token hash, with its keys, and the stored hash."""
    row = conn.execute(k.device_sql("token_hash", "sqlite", token=True), (token_hash,)).fetchone()
    return Credential(k.device_of(row), row[7]) if row else None


def _state(conn: sqlite3.Connection, device_id: str) -> tuple[bool, bool]:
    row = conn.execute(k.DEVICE_STATE, (device_id,)).fetchone()
    if row is None:
        raise k.no_device(device_id)
    return bool(row[0]), bool(row[1])


def _append(
    conn: sqlite3.Connection,
    at: int,
    event: Event,
    device_id: str,
    actor: str,
    key_id: str | None = None,
    public_key: str | None = None,
) -> KeyEntry:
    row = conn.execute(k.LAST_ENTRY).fetchone()
    prev = k.entry_of(row) if row else None
    entry = keylog.append(prev, at, event, device_id, actor, key_id, public_key)
    conn.execute(k.INSERT_ENTRY, k.entry_row(entry))
    return entry


def register(
    conn: sqlite3.Connection,
    device_id: str,
    key_id: str,
    public_key: str,
    at: int,
    actor: str,
    by_operator: bool,
    max_keys: int,
) -> k.Registered:
    """Register a key (the log entry and the device's signature requirement with it)."""
    self_enrol, _ = _state(conn, device_id)
    same_id = conn.execute(k.KEY_BY_ID, (key_id,)).fetchall()
    active = int(conn.execute(k.ACTIVE_KEYS, (device_id,)).fetchone()[0])
    if not k.must_create(
        device_id, key_id, public_key, by_operator, self_enrol, same_id, active, max_keys
    ):
        return "same"
    conn.execute(k.INSERT_KEY, (device_id, key_id, public_key, at, actor))
    conn.execute(k.REQUIRE, (True, device_id))
    _append(conn, at, k.key_event(by_operator), device_id, actor, key_id, public_key)
    return "created"


def revoke(conn: sqlite3.Connection, device_id: str, key_id: str, at: int, actor: str) -> bool:
    """Revoke a key from `at` on; False when it was revoked already (nothing logged)."""
    _state(conn, device_id)
    held = k.held_key(conn.execute(k.KEY_BY_ID, (key_id,)).fetchall(), device_id, key_id)
    if held.revoked_at is not None:
        return False
    conn.execute(k.REVOKE_KEY, (at, actor, device_id, key_id))
    _append(conn, at, "revoked", device_id, actor, key_id)
    return True


def set_self_enrol(
    conn: sqlite3.Connection, device_id: str, open_: bool, at: int, actor: str
) -> bool:
    """Open or close a device's self-enrolment; False when it already was so."""
    self_enrol, _ = _state(conn, device_id)
    if self_enrol == open_:
        return False
    conn.execute(k.SELF_ENROL, (open_, device_id))
    _append(conn, at, k.enrol_event(open_), device_id, actor)
    return True


def require(conn: sqlite3.Connection, device_id: str, at: int, actor: str) -> bool:
    """Refuse a device's version-1 records from now on; False when they already were."""
    _, required = _state(conn, device_id)
    if required:
        return False
    conn.execute(k.REQUIRE, (True, device_id))
    _append(conn, at, "signatures_required", device_id, actor)
    return True


def list_keys(conn: sqlite3.Connection, device_id: str) -> list[DeviceKey]:
    """Every key a device holds or held, oldest first; NotFound for an unknown device."""
    _state(conn, device_id)
    return [k.key_of(row) for row in conn.execute(k.DEVICE_KEYS, (device_id,)).fetchall()]


def log_page(conn: sqlite3.Connection, after: int, limit: int) -> list[KeyEntry]:
    """The log's entries after entry number `after`, at most `limit`."""
    return [k.entry_of(row) for row in conn.execute(k.LOG_PAGE, (after, limit)).fetchall()]


def log_entry(conn: sqlite3.Connection, entry: int) -> KeyEntry | None:
    """One entry of the log."""
    row = conn.execute(k.ONE_ENTRY, (entry,)).fetchone()
    return k.entry_of(row) if row else None
