"""Device keys and the key log: what both stores decide and write alike (PROTOCOL.md section 7).

The statements are written once with `?` placeholders (`sql` turns them into
PostgreSQL's); the decisions are pure functions of the rows the store read
inside its write transaction, so that SQLite and PostgreSQL answer alike.
Every key write runs under one lock (SQLite's single writer, a PostgreSQL
advisory transaction lock), taken before anything is read: the checks see
every earlier key write, and two appends to the log never fork its chain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Literal

from playproof.errors import Conflict, Forbidden, NotFound
from playproof.keylog import Event, KeyEntry
from playproof.stores.base import DeviceInfo, DeviceKey

Registered = Literal["created", "same"]

_KEY_COLUMNS: Final = (
    "device_id, key_id, public_key, registered_at, registered_by, revoked_at, revoked_by"
)
ENTRY_COLUMNS: Final = (
    "entry, at, event, device_id, key_id, public_key, actor, prev_hash, entry_hash"
)
DEVICE_STATE: Final = "SELECT self_enrol, signatures_required FROM devices WHERE device_id = ?"
DEVICE_KEYS: Final = (
    f"SELECT {_KEY_COLUMNS} FROM device_keys WHERE device_id = ? ORDER BY registered_at, key_id"
)
# Across devices: a key id names one key of one device (the unique index device_keys_key_id).
KEY_BY_ID: Final = f"SELECT {_KEY_COLUMNS} FROM device_keys WHERE key_id = ?"
ACTIVE_KEYS: Final = "SELECT count(*) FROM device_keys WHERE device_id = ? AND revoked_at IS NULL"
INSERT_KEY: Final = (
    "INSERT INTO device_keys (device_id, key_id, public_key, registered_at, registered_by) "
    "VALUES (?, ?, ?, ?, ?)"
)
REVOKE_KEY: Final = (
    "UPDATE device_keys SET revoked_at = ?, revoked_by = ? "
    "WHERE device_id = ? AND key_id = ? AND revoked_at IS NULL"
)
REQUIRE: Final = "UPDATE devices SET signatures_required = ? WHERE device_id = ?"
SELF_ENROL: Final = "UPDATE devices SET self_enrol = ? WHERE device_id = ?"
LAST_ENTRY: Final = f"SELECT {ENTRY_COLUMNS} FROM key_log ORDER BY entry DESC LIMIT 1"
INSERT_ENTRY: Final = f"INSERT INTO key_log ({ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
LOG_PAGE: Final = f"SELECT {ENTRY_COLUMNS} FROM key_log WHERE entry > ? ORDER BY entry LIMIT ?"
ONE_ENTRY: Final = f"SELECT {ENTRY_COLUMNS} FROM key_log WHERE entry = ?"
# A device with its version-2 state and its keys as JSON, in one statement per dialect.
_DEVICE: Final = (
    "d.device_id, d.store_id, d.created_at, d.revoked_at, d.self_enrol, d.signatures_required"
)


def sql(statement: str, dialect: str) -> str:
    """`statement` with the dialect's placeholders."""
    return statement if dialect == "sqlite" else statement.replace("?", "%s")


def device_sql(where: str, dialect: str, token: bool = False) -> str:
    """A device (and its token hash when `token`) with its keys as a JSON array, one row."""
    if dialect == "sqlite":
        # SQLite 3.40 has no ORDER BY inside an aggregate: the subquery orders the keys.
        keys = (
            "(SELECT json_group_array(json_array(key_id, public_key, registered_at, "
            "registered_by, revoked_at, revoked_by)) FROM (SELECT * FROM device_keys k "
            "WHERE k.device_id = d.device_id ORDER BY registered_at, key_id))"
        )
    else:
        keys = (
            "(SELECT coalesce(json_agg(json_build_array(key_id, public_key, registered_at, "
            "registered_by, revoked_at, revoked_by) ORDER BY registered_at, key_id), '[]') "
            "FROM device_keys k WHERE k.device_id = d.device_id)"
        )
    tail = ", d.token_hash" if token else ""
    return sql(f"SELECT {_DEVICE}, {keys}{tail} FROM devices d WHERE d.{where} = ?", dialect)


def device_of(row: Sequence[Any]) -> DeviceInfo:
    """A device from `device_sql`'s first seven columns."""
    device_id, store_id, created_at, revoked_at, self_enrol, required, keys = row[:7]
    listed = json.loads(keys) if isinstance(keys, str) else keys
    return DeviceInfo(
        device_id,
        store_id,
        created_at,
        revoked_at,
        tuple(DeviceKey(device_id, *key) for key in listed),
        bool(self_enrol),
        bool(required),
    )


def key_of(row: Sequence[Any]) -> DeviceKey:
    """A key from a row of `_KEY_COLUMNS`."""
    return DeviceKey(*row)


def entry_of(row: Sequence[Any]) -> KeyEntry:
    """A log entry from a row of ENTRY_COLUMNS."""
    entry, at, event, device_id, key_id, public_key, actor, prev_hash, entry_hash = row
    return KeyEntry(
        int(entry), int(at), event, device_id, key_id, public_key, actor, prev_hash, entry_hash
    )


def entry_row(entry: KeyEntry) -> tuple[Any, ...]:
    """A log entry's values in ENTRY_COLUMNS order."""
    return (
        entry.entry,
        entry.at,
        entry.event,
        entry.device_id,
        entry.key_id,
        entry.public_key,
        entry.actor,
        entry.prev_hash,
        entry.entry_hash,
    )


def no_device(device_id: str) -> NotFound:
    return NotFound(f"no device {device_id!r} is registered")


def held_key(same_id: Sequence[Sequence[Any]], device_id: str, key_id: str) -> DeviceKey:
    """The device's key of that id among `same_id` (KEY_BY_ID's rows), else NotFound."""
    for row in same_id:
        held = key_of(row)
        if held.device_id == device_id:
            return held
    raise NotFound(f"device {device_id!r} has no key {key_id}")


def must_create(
    device_id: str,
    key_id: str,
    public_key: str,
    by_operator: bool,
    self_enrol: bool,
    same_id: Sequence[Sequence[Any]],
    active: int,
    max_keys: int,
) -> bool:
    """Whether a registration inserts the key (True) or finds it registered already (False).

    `same_id`: the stored keys with this key id (of any device); `active`: the
    device's unrevoked keys. The same key again is acknowledged even when
    self-enrolment is closed since: nothing new is enrolled, and the device
    needs to hear that its key stands.
    """
    for row in same_id:
        held = key_of(row)
        if held.device_id != device_id:
            raise Conflict(f"key {key_id} is registered to another device")
        if held.public_key != public_key:
            raise Conflict(f"key id {key_id} is registered with another public key")
        if held.revoked_at is not None:
            raise Conflict(
                f"key {key_id} of device {device_id!r} was revoked at {held.revoked_at}: "
                "a revoked key is never registered again, make a new one"
            )
        return False
    if not by_operator and not self_enrol:
        raise Forbidden(
            f"self-enrolment is closed for device {device_id!r}: an operator adds its keys"
        )
    if active >= max_keys:
        raise Conflict(
            f"device {device_id!r} holds {active} active keys, the most allowed "
            f"(max_device_keys {max_keys}): revoke one first"
        )
    return True


def key_event(by_operator: bool) -> Event:
    return "added" if by_operator else "registered"


def enrol_event(open_: bool) -> Event:
    return "self_enrol_opened" if open_ else "self_enrol_closed"
