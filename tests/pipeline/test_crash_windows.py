"""Crash windows: an ingest node or a loader dying between two steps loses and doubles nothing.

- A node that dies after JetStream stored its records, before answering the
  device: the records hold their keys; the resend (to any node) is `duplicate`.
- A loader that dies after its store commit, before acknowledging JetStream:
  the batch is redelivered to the next loader; accepts come back `duplicate`
  from the store's dedupe and rejects are not counted again.
- A loader that dies before committing: the batch is redelivered whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from playproof.pipeline.codec import batches_of, decode_entry, partition_of
from playproof.pipeline.jetstream import JetStream
from playproof.pipeline.loader import Loader, wait_loaded
from playproof.pipeline.settings import parse
from playproof.pipeline.sink import JetStreamSink
from playproof.rules import HOUR_MS
from playproof.stores.base import BatchWrite
from playproof.stores.postgres import PostgresStore
from tests.stores.pipeline import batch, brief
from tests.support import make_record, now_ms

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


def mixed(first_seq: int, count: int, now: int) -> BatchWrite:
    """A batch of accepted records with a stale one, an undecodable one and a foreign one."""
    items: list[Any] = [
        make_record(seq=s, end_ts=now - 2_000) for s in range(first_seq, first_seq + count)
    ]
    items.append(make_record(seq=first_seq + count, end_ts=now - 5 * HOUR_MS))
    items.append({"seq": first_seq + count + 1, "v": 1})
    items.append(make_record(seq=first_seq, end_ts=now - 2_000, device_id="scr-2"))
    return batch(items, received_at=now)


async def counts(store: PostgresStore) -> dict[str, Any]:
    """Impressions, keys, and rejects with their times."""
    return {
        "impressions": (await store.read_rows("SELECT count(*) FROM impressions"))[0][0],
        "keys": (await store.read_rows("SELECT count(*) FROM impression_keys"))[0][0],
        "rejects": await store.read_rows("SELECT reason, times FROM rejects ORDER BY reason"),
    }


async def test_a_node_that_died_after_jetstream_stored_leaves_the_resend_a_duplicate(
    js_url: str, sink: JetStreamSink, loader: Loader, pg_store: PostgresStore
) -> None:
    now = now_ms()
    write = batch([make_record(seq=s, end_ts=now - 2_000) for s in range(1, 6)], received_at=now)
    await sink.commit([write])  # stored in JetStream; the node dies before answering
    await sink.close()

    other_node = JetStreamSink(parse(js_url))
    await other_node.open()
    try:
        resend = batch(
            [make_record(seq=s, end_ts=now - 2_000) for s in range(1, 6)], received_at=now + 50
        )
        [acks] = await other_node.commit([resend])
    finally:
        await other_node.close()

    assert [brief(a)[1] for a in acks] == ["duplicate"] * 5
    await wait_loaded(parse(js_url), 30)
    assert (await counts(pg_store))["impressions"] == 5


async def _commit_without_ack(js_url: str, store: PostgresStore, device: str = "scr-1") -> int:
    """Do what a loader does up to its commit, then die: fetch, commit, never acknowledge."""
    settings = parse(js_url)
    js = await JetStream.connect(settings, "doomed-loader")
    try:
        sub = await js.pull(partition_of(device, settings.partitions))
        msgs = await sub.fetch(settings.batch, timeout=5)
        await store.commit(batches_of([decode_entry(m.data) for m in msgs]))
        return len(msgs)
    finally:
        await js.close()


async def test_a_loader_that_died_between_commit_and_ack_doubles_nothing(
    js_url: str, sink: JetStreamSink, pg_store: PostgresStore
) -> None:
    now = now_ms()
    await sink.commit([mixed(1, 20, now), mixed(100, 20, now + 1)])
    taken = await _commit_without_ack(js_url, pg_store)
    before = await counts(pg_store)

    loader = Loader(parse(js_url), pg_store)
    running = asyncio.create_task(loader.run())
    try:
        await wait_loaded(parse(js_url), 30)  # after ack_wait (3 s) the batch comes again
    finally:
        loader.stop()
        await running

    assert taken == 46
    assert loader.progress.redelivered >= 1
    assert loader.progress.skipped_rejects == 6
    after = await counts(pg_store)
    assert after == before
    assert after["impressions"] == after["keys"] == 40
    assert after["rejects"] == sorted([("forbidden", 1), ("invalid", 1), ("stale", 1)] * 2)


async def test_a_loader_that_died_before_committing_leaves_the_batch_to_the_next(
    js_url: str, sink: JetStreamSink, pg_store: PostgresStore
) -> None:
    now = now_ms()
    await sink.commit([mixed(1, 30, now)])
    settings = parse(js_url)
    js = await JetStream.connect(settings, "doomed-loader")
    sub = await js.pull(partition_of("scr-1", settings.partitions))
    assert len(await sub.fetch(settings.batch, timeout=5)) == 33
    await js.close()  # died holding the batch

    loader = Loader(settings, pg_store)
    running = asyncio.create_task(loader.run())
    try:
        await wait_loaded(settings, 30)
    finally:
        loader.stop()
        await running

    found = await counts(pg_store)
    assert found["impressions"] == 30
    assert found["rejects"] == [("forbidden", 1), ("invalid", 1), ("stale", 1)]
    assert loader.progress.skipped_rejects == 0


async def test_loaders_share_the_partitions_and_load_each_batch_once(
    js_url: str, sink: JetStreamSink, pg_store: PostgresStore
) -> None:
    now = now_ms()
    devices = [f"scr-{i}" for i in range(12)]
    writes = [
        batch(
            [make_record(device_id=d, seq=s, end_ts=now - 2_000) for s in range(1, 51)],
            d,
            received_at=now,
        )
        for d in devices
    ]
    settings = parse(js_url)
    loaders = [Loader(settings, pg_store) for _ in range(3)]
    tasks = [asyncio.create_task(loader.run()) for loader in loaders]
    try:
        for write in writes:
            await sink.commit([write])
        await wait_loaded(settings, 30)
    finally:
        for loader in loaders:
            loader.stop()
        await asyncio.gather(*tasks)

    assert (await counts(pg_store))["impressions"] == 600
    assert sum(loader.progress.records for loader in loaders) == 600


async def test_a_loader_dying_while_another_acks_later_messages_loses_nothing(
    js_url: str, sink: JetStreamSink, pg_store: PostgresStore
) -> None:
    """Two loaders hold parts of one partition; the one holding the earlier part dies.

    The other's acks must not cover what the dead one held (as an ack-all would):
    those messages come again and are loaded.
    """
    now = now_ms()
    settings = parse(js_url)
    records = [make_record(seq=s, end_ts=now - 2_000) for s in range(1, 21)]
    await sink.commit([batch(records[:10], received_at=now)])
    doomed = await JetStream.connect(settings, "doomed-loader")
    sub = await doomed.pull(partition_of("scr-1", settings.partitions))
    assert len(await sub.fetch(settings.batch, timeout=5)) == 10  # holds the first ten
    await sink.commit([batch(records[10:], received_at=now + 1)])

    loader = Loader(settings, pg_store)
    running = asyncio.create_task(loader.run())
    try:
        while loader.progress.records < 10:  # the survivor loads and acks the last ten
            await asyncio.sleep(0.05)
        await doomed.close()  # then the first loader dies without committing
        await wait_loaded(settings, 30)
    finally:
        loader.stop()
        await running

    assert (await counts(pg_store))["impressions"] == 20
