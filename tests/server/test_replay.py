"""`playproof rejects replay`: rejected records judged again once the bug behind them is fixed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import psycopg

from playproof.rules import DEFAULT_POLICY
from playproof.server.replay import replay
from playproof.signing import KeyPair
from playproof.stores import open_store
from playproof.stores.base import DeviceInfo, Store
from tests.server.test_committer import commit_as_one_group, poison
from tests.stores.conftest import query
from tests.stores.pipeline import batch
from tests.support import make_record, now_ms


def cure(store: Store) -> None:
    """The bug is fixed: the database takes the poisoned content again."""
    if store.dialect == "sqlite":
        with sqlite3.connect(store.url.removeprefix("sqlite:///")) as conn:
            conn.execute("DROP TRIGGER poison")
        return
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER poison ON impressions")


async def test_a_record_refused_by_a_bug_is_accepted_on_replay_and_leaves_the_reconciliation(
    store: Store,
) -> None:
    poison(store)
    record = make_record(device_id="scr-b", seq=1, content_id="cnt-poison")
    (acks,) = await commit_as_one_group(store, [batch([record], "scr-b")])
    assert acks[0].reason == "invalid"
    assert len((await store.held_records(["scr-b"])).rejects) == 1
    not_yet = await replay(store, "invalid", 0, DEFAULT_POLICY, now_ms())
    assert not_yet == {"refused by the store again": 1}, "not fixed yet: left for later"
    cure(store)
    assert await replay(store, "invalid", 0, DEFAULT_POLICY, now_ms()) == {"accepted": 1}
    assert await query(store, "SELECT seq, content_id FROM impressions") == [(1, "cnt-poison")]
    kept = await query(store, "SELECT reason, replay_result FROM rejects")
    assert kept == [("invalid", "accepted")], "the reject stays for audit, marked"
    held = await store.held_records(["scr-b"])
    assert (len(held.impressions), held.rejects) == (1, []), "counted once, as held"
    assert await replay(store, "invalid", 0, DEFAULT_POLICY, now_ms()) == {}, "already replayed"


async def test_a_record_judged_the_same_again_is_marked_without_a_new_audit_row(
    store: Store,
) -> None:
    write = batch([{"seq": 4, "device_id": "scr-1", "junk": True}])
    await store.commit([write])
    counts = await replay(store, "invalid", 0, DEFAULT_POLICY, now_ms())
    assert counts == {"rejected:invalid": 1}
    rows = await query(store, "SELECT seq, replay_result FROM rejects")
    assert rows == [(4, "rejected:invalid")]


async def test_only_rejects_of_the_reason_and_since_the_time_are_replayed(store: Store) -> None:
    old = make_record(seq=1, end_ts=now_ms() - 5 * 3_600_000)
    await store.commit([batch([old])])  # stale: received now, ended 5 h ago
    assert await replay(store, "invalid", 0, DEFAULT_POLICY, now_ms()) == {}
    assert await replay(store, "stale", now_ms() + 60_000, DEFAULT_POLICY, now_ms()) == {}
    assert await replay(store, "stale", 0, DEFAULT_POLICY, now_ms()) == {"rejected:stale": 1}


def test_the_command_line_replays_and_prints_the_outcomes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"

    async def setup() -> None:
        opened = open_store(url)
        await opened.open()
        try:
            await opened.commit([batch([{"seq": 9, "device_id": "scr-1"}])])
        finally:
            await opened.close()

    import asyncio

    asyncio.run(setup())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "playproof",
            "rejects",
            "replay",
            "--reason",
            "invalid",
            "--since",
            "2000-01-01",
            "--db",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == ["rejected:invalid\t1"]
    assert "replayed 1 rejects of reason 'invalid'" in done.stderr


async def test_a_replay_never_accepts_what_the_devices_keys_refuse(store: Store) -> None:
    """A version-1 record from a device that signs stays refused on replay, whatever the
    rules now say of the reason it was first rejected for (PROTOCOL.md section 7)."""
    keys = KeyPair.generate()
    await store.add_device(DeviceInfo("scr-sig", "store-1", 0, None), "hash-scr-sig")
    await store.register_key(
        "scr-sig", keys.key_id, keys.public.hex(), 0, "device", by_operator=False
    )
    old = make_record(device_id="scr-sig", seq=1, end_ts=now_ms() - 5 * 3_600_000)
    await store.commit([batch([old], "scr-sig")])  # stale, judged without its device's keys
    lenient = msgspec.structs.replace(DEFAULT_POLICY, offline_limit_ms=24 * 3_600_000)
    assert await replay(store, "stale", 0, lenient, now_ms()) == {"rejected:bad_signature": 1}
    assert await query(store, "SELECT count(*) FROM impressions") == [(0,)]
