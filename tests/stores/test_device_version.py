"""The device version, on both stores: every change to a device or its keys moves it, by
whoever makes it; committing plays and reading do not (authentication trusts its cache
for as long as the number stays put)."""

from __future__ import annotations

from playproof.signing import KeyPair
from playproof.stores.base import DeviceInfo, Store
from tests.stores.pipeline import batch, commit_one
from tests.support import make_record


async def test_each_change_to_a_device_or_its_keys_moves_the_version(store: Store) -> None:
    versions = [await store.device_version()]

    async def moved() -> bool:
        versions.append(await store.device_version())
        return versions[-1] > versions[-2]

    await store.add_device(DeviceInfo("scr-1", "store-1", 1, None), "hash-1")
    assert await moved(), "a new device"
    pair = KeyPair.generate()
    await store.register_key("scr-1", pair.key_id, pair.public.hex(), 10, "device", False)
    assert await moved(), "a key registered"
    await store.revoke_key("scr-1", pair.key_id, 20, "operator")
    assert await moved(), "a key revoked"
    await store.set_self_enrol("scr-1", False, 30, "operator")
    assert await moved(), "self-enrolment closed"
    await store.rotate_device("scr-1", "hash-2")
    assert await moved(), "a token rotated"
    await store.revoke_device("scr-1", 40)
    assert await moved(), "a device revoked"


async def test_plays_committed_and_devices_read_leave_the_version_alone(store: Store) -> None:
    await store.add_device(DeviceInfo("scr-1", "store-1", 1, None), "hash-1")
    before = await store.device_version()
    acks = await commit_one(store, batch([make_record(seq=s) for s in (1, 2, 3)]))
    assert [result for _, result, _ in acks] == ["accepted"] * 3
    assert await store.device_for_token("hash-1") is not None
    assert await store.list_devices()
    assert await store.device_version() == before
