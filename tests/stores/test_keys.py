"""Device keys and the key log, on both stores: registration rules, the append-only log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest

from playproof import keylog
from playproof.errors import Conflict, Forbidden, NotFound, StoreError
from playproof.signing import KeyPair
from playproof.stores import open_store
from playproof.stores.base import DeviceInfo, Store


def new_key() -> tuple[str, str]:
    """A fresh key's id and public key hex."""
    pair = KeyPair.generate()
    return pair.key_id, pair.public.hex()


async def add_device(store: Store, device_id: str, token_hash: str | None = None) -> None:
    await store.add_device(DeviceInfo(device_id, "store-1", 1, None), token_hash or device_id)


async def test_a_key_registers_once_then_answers_same_and_the_device_must_sign(
    store: Store,
) -> None:
    await add_device(store, "scr-1", "hash-1")
    key_id, public = new_key()
    assert await store.register_key("scr-1", key_id, public, 1000, "device", False) == "created"
    assert await store.register_key("scr-1", key_id, public, 2000, "device", False) == "same"
    found = await store.device_for_token("hash-1")
    assert found is not None
    device = found.device
    assert device.signatures_required and device.self_enrol
    assert [(k.key_id, k.public_key, k.registered_at, k.registered_by) for k in device.keys] == [
        (key_id, public, 1000, "device")
    ]
    assert await store.get_device("scr-1") == device
    log = await store.key_log()
    assert [(e.entry, e.event, e.key_id, e.actor) for e in log] == [
        (1, "registered", key_id, "device")
    ]


async def test_closed_self_enrolment_refuses_the_device_but_not_an_operator(store: Store) -> None:
    await add_device(store, "scr-1")
    assert await store.set_self_enrol("scr-1", False, 10, "ops")
    assert not await store.set_self_enrol("scr-1", False, 11, "ops")
    key_id, public = new_key()
    with pytest.raises(Forbidden, match="self-enrolment is closed"):
        await store.register_key("scr-1", key_id, public, 20, "device", False)
    assert await store.register_key("scr-1", key_id, public, 30, "ops", True) == "created"
    # The device asking again for the key an operator added hears that it stands.
    assert await store.register_key("scr-1", key_id, public, 40, "device", False) == "same"
    events = [e.event for e in await store.key_log()]
    assert events == ["self_enrol_closed", "added"]


async def test_past_the_active_key_limit_a_key_is_refused_and_a_revoked_one_does_not_count(
    store: Store,
) -> None:
    await add_device(store, "scr-1")
    held = [new_key() for _ in range(4)]
    for at, (key_id, public) in enumerate(held):
        await store.register_key("scr-1", key_id, public, at, "device", False, max_keys=4)
    fifth = new_key()
    with pytest.raises(Conflict, match="4 active keys"):
        await store.register_key("scr-1", *fifth, 10, "device", False, max_keys=4)
    assert await store.revoke_key("scr-1", held[0][0], 20, "ops")
    assert not await store.revoke_key("scr-1", held[0][0], 21, "ops")
    assert await store.register_key("scr-1", *fifth, 30, "device", False, max_keys=4) == "created"
    keys = await store.list_keys("scr-1")
    first = keys[0]
    assert (first.key_id, first.revoked_at, first.revoked_by) == (held[0][0], 20, "ops")
    assert sum(k.revoked_at is None for k in keys) == 4


async def test_a_key_of_another_device_or_a_revoked_key_is_refused(store: Store) -> None:
    await add_device(store, "scr-1")
    await add_device(store, "scr-2")
    key_id, public = new_key()
    await store.register_key("scr-1", key_id, public, 1, "device", False)
    with pytest.raises(Conflict, match="another device"):
        await store.register_key("scr-2", key_id, public, 2, "device", False)
    await store.revoke_key("scr-1", key_id, 3, "ops")
    with pytest.raises(Conflict, match="revoked"):
        await store.register_key("scr-1", key_id, public, 4, "ops", True)
    with pytest.raises(NotFound):
        await store.revoke_key("scr-2", key_id, 5, "ops")


async def test_unknown_devices_are_not_found(store: Store) -> None:
    key_id, public = new_key()
    with pytest.raises(NotFound):
        await store.register_key("nobody", key_id, public, 1, "device", False)
    with pytest.raises(NotFound):
        await store.list_keys("nobody")
    with pytest.raises(NotFound):
        await store.require_signatures("nobody", 1, "ops")
    assert await store.key_log() == []


async def test_requiring_signatures_is_logged_once_and_the_log_pages(store: Store) -> None:
    await add_device(store, "scr-1")
    assert await store.require_signatures("scr-1", 5, "ops")
    assert not await store.require_signatures("scr-1", 6, "ops")
    device = await store.get_device("scr-1")
    assert device is not None and device.signatures_required and not device.keys
    for at in range(3):
        await store.register_key("scr-1", *new_key(), 10 + at, "ops", True)
    log = await store.key_log()
    assert [e.entry for e in log] == [1, 2, 3, 4] and keylog.chain_error(log) == ""
    page = await store.key_log(after=2, limit=1)
    assert page == [log[2]]
    assert await store.key_log_entry(2) == log[1]
    assert keylog.chain_error(await store.key_log(after=1), after=log[0]) == ""


def _raw(store: Store, sql: str, disable_trigger: bool = False) -> None:
    """One statement on the store's database directly, as someone with file or SQL access."""
    if store.url.startswith("sqlite"):
        with sqlite3.connect(store.url.removeprefix("sqlite:///")) as conn:
            if disable_trigger:
                conn.execute("DROP TRIGGER key_log_no_update")
            conn.execute(sql)
        return
    with psycopg.connect(store.url, autocommit=True) as conn:
        if disable_trigger:
            conn.execute("ALTER TABLE key_log DISABLE TRIGGER key_log_no_change")
        conn.execute(sql.encode())


async def test_the_log_refuses_updates_and_a_rewrite_past_the_trigger_breaks_the_chain(
    store: Store,
) -> None:
    await add_device(store, "scr-1")
    for at in range(3):
        await store.register_key("scr-1", *new_key(), at, "device", False)
    rewrite = "UPDATE key_log SET actor = 'ops' WHERE entry = 2"
    with pytest.raises((sqlite3.IntegrityError, psycopg.Error), match="append-only"):
        _raw(store, rewrite)
    with pytest.raises((sqlite3.IntegrityError, psycopg.Error), match="append-only"):
        _raw(store, "DELETE FROM key_log WHERE entry = 3")
    assert keylog.chain_error(await store.key_log()) == ""
    _raw(store, rewrite, disable_trigger=True)
    error = keylog.chain_error(await store.key_log())
    assert error.startswith("entry 2: hash mismatch"), error


@pytest.mark.postgres
async def test_concurrent_registrations_on_several_nodes_never_fork_the_chain(
    pg_url: str, tmp_path: Path
) -> None:
    """Two stores (two service nodes) on one database, registering at once."""
    nodes = [open_store(pg_url, tmp_path / "blobs") for _ in range(2)]
    for node in nodes:
        await node.open()
    try:
        devices = [f"scr-{i}" for i in range(12)]
        for device_id in devices:
            await add_device(nodes[0], device_id)
        # Each device registers three keys at once on both nodes; two race for the same key.
        racing = new_key()
        attempts = [
            nodes[i % 2].register_key(device_id, *new_key(), i, "device", False)
            for i, device_id in enumerate(devices * 3)
        ] + [nodes[i].register_key("scr-0", *racing, 99, "device", False) for i in range(2)]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert not [r for r in results if isinstance(r, StoreError)]
        assert sorted(r for r in results[-2:] if isinstance(r, str)) == ["created", "same"]
        log = await nodes[1].key_log()
        assert keylog.chain_error(log) == ""
        assert len(log) == len(devices) * 3 + 1
    finally:
        for node in nodes:
            await node.close()
