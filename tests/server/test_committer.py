"""The group committer isolates a poison batch: its neighbours commit, its good records too.

The stores are real (an SQLite file, a PostgreSQL schema); the poison is a
trigger in the database that refuses one content id, as a constraint or a
value the store cannot hold would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from playproof.errors import StoreUnavailable
from playproof.protocol import Ack
from playproof.server.committer import GroupCommitter
from playproof.stores.base import BatchWrite, Store
from tests.stores.conftest import query
from tests.stores.pipeline import batch
from tests.support import make_record

_SQLITE_POISON = """
CREATE TRIGGER poison BEFORE INSERT ON impressions WHEN NEW.content_id = 'cnt-poison'
BEGIN SELECT RAISE(ABORT, 'poisoned content'); END
"""
_PG_POISON = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  IF NEW.content_id = 'cnt-poison' THEN
    RAISE EXCEPTION 'poisoned content' USING ERRCODE = '22023';
  END IF;
  IF NEW.content_id = 'cnt-serial' THEN
    RAISE EXCEPTION 'cannot serialize' USING ERRCODE = '40001';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE INSERT ON impressions FOR EACH ROW EXECUTE FUNCTION poison();
"""


def poison(store: Store) -> None:
    """Make the database refuse impressions of the poisoned contents."""
    if store.dialect == "sqlite":
        import sqlite3

        with sqlite3.connect(store.url.removeprefix("sqlite:///")) as conn:
            conn.execute(_SQLITE_POISON)
        return
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(_PG_POISON)


def device_batch(device_id: str, contents: list[str]) -> BatchWrite:
    records = [
        make_record(device_id=device_id, seq=i, content_id=c) for i, c in enumerate(contents, 1)
    ]
    return batch(records, device_id)


async def commit_as_one_group(store: Store, writes: list[BatchWrite]) -> list[Any]:
    """Queue every batch before the lane starts, so that they share one group commit."""
    groups: list[int] = []
    committer = GroupCommitter(store, observe=lambda b, r, s: groups.append(b))
    tasks = [asyncio.ensure_future(committer.commit(w)) for w in writes]
    await asyncio.sleep(0)
    committer.start()
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await committer.stop()
    assert groups == [len(writes)], "the batches were committed as one group"
    return results


def results(acks: list[Ack]) -> list[tuple[Any, ...]]:
    return [(a.seq, a.result, a.reason or None) for a in acks]


async def test_a_record_the_store_refuses_is_rejected_alone_and_every_other_record_commits(
    store: Store,
) -> None:
    poison(store)
    writes = [
        device_batch("scr-a", ["cnt-1", "cnt-1"]),
        device_batch("scr-b", ["cnt-1", "cnt-poison", "cnt-1"]),
        device_batch("scr-c", ["cnt-1"]),
    ]
    a, b, c = await commit_as_one_group(store, writes)
    assert results(a) == [(1, "accepted", None), (2, "accepted", None)]
    assert results(b) == [(1, "accepted", None), (2, "rejected", "invalid"), (3, "accepted", None)]
    assert results(c) == [(1, "accepted", None)]
    stored = await query(store, "SELECT device_id, seq FROM impressions ORDER BY device_id, seq")
    assert stored == [("scr-a", 1), ("scr-a", 2), ("scr-b", 1), ("scr-b", 3), ("scr-c", 1)]
    kept = await query(store, "SELECT device_id, seq, reason, detail FROM rejects")
    assert [row[:3] for row in kept] == [("scr-b", 2, "invalid")]
    assert "poisoned content" in kept[0][3], "the store's error is kept with the reject"
    journal = await store.journals("scr-b")
    assert (journal[0].high_water, journal[0].gaps) == (3, ()), "the reject fills its place"


async def test_a_refused_record_resent_is_answered_from_its_reject(store: Store) -> None:
    """Rejected once, the same record sent again is rejected again: one audit row, twice."""
    poison(store)
    record = make_record(device_id="scr-b", seq=1, content_id="cnt-poison")
    first = await commit_as_one_group(store, [batch([record], "scr-b")])
    again = await commit_as_one_group(store, [batch([record], "scr-b")])
    assert results(first[0]) == results(again[0]) == [(1, "rejected", "invalid")]
    rows = await query(store, "SELECT times FROM rejects WHERE device_id = 'scr-b'")
    assert rows == [(2,)], "one audit row, counted twice"


@pytest.mark.postgres
async def test_a_batch_failing_alone_for_another_reason_gets_503_and_no_neighbour_does(
    pg_url: str,
) -> None:
    from playproof.stores import open_store

    opened = open_store(pg_url)
    await opened.open()
    try:
        poison(opened)
        writes = [
            device_batch("scr-a", ["cnt-1"]),
            device_batch("scr-b", ["cnt-1", "cnt-serial"]),
            device_batch("scr-c", ["cnt-1"]),
        ]
        a, b, c = await commit_as_one_group(opened, writes)
        assert isinstance(b, StoreUnavailable), "a serialization failure is no data error"
        assert results(a) == results(c) == [(1, "accepted", None)]
        stored = await query(opened, "SELECT device_id FROM impressions ORDER BY device_id")
        assert stored == [("scr-a",), ("scr-c",)], "nothing of the failed batch is kept"
        assert await query(opened, "SELECT count(*) FROM rejects") == [(0,)]
    finally:
        await opened.close()
