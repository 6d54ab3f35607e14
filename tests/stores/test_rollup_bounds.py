"""No device can overflow the billing sums, on either store, whatever was stored before.

The rules now refuse durations past 24 h, but rows stored before the bound may
claim 2^53 - 1 ms: the rollups and the report count each play for at most 24 h,
so no sum can leave 64 bits (it used to fail the whole group commit, or turn
SQLite's rollup into an inexact REAL), and migration 0003 repairs the rollups
that old code damaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playproof.protocol import Record
from playproof.rules import HOUR_MS, Verdict
from playproof.stores import open_store, queries
from playproof.stores.base import BatchWrite, Judged, Store
from tests.stores.conftest import query
from tests.stores.pipeline import DEVICE, Item, batch, commit, commit_one
from tests.stores.version2 import DURATIONS, HUGE, IDS, START, at_version_2
from tests.support import make_record, now_ms

DAY_MS = 24 * HOUR_MS


def accepted_before_the_bounds(records: list[Record], device_id: str = DEVICE) -> BatchWrite:
    """A batch as the rules judged it before durations were bounded: every record valid."""
    received = now_ms()
    judged = [Judged(r, Verdict(None, "valid", 100, ())) for r in records]
    return BatchWrite(device_id, received, received, judged)


def huge_plays(device_id: str, n: int, start: int, first_seq: int = 1) -> list[Record]:
    """`n` plays of one content starting at `start`, each claiming 2^53 - 1 ms."""
    return [
        make_record(
            device_id=device_id, seq=s, start_ts=start, end_ts=start + 15_000, duration_ms=HUGE
        )
        for s in range(first_seq, first_seq + n)
    ]


async def rollup_measures(store: Store) -> list[tuple[Any, ...]]:
    """Per rollup row: the table, plays and played_ms, and (SQLite) whether it is an integer."""
    rows = []
    for table in ("rollup_content", "rollup_device"):
        for plays, played in await query(store, f"SELECT plays, played_ms FROM {table}"):
            rows.append((table, plays, played, type(played).__name__))
    return sorted(rows)


async def test_two_batches_of_huge_durations_commit_together_and_sum_exactly(
    store: Store,
) -> None:
    # 1,800 plays of 2^53 - 1 ms sum past 2^63: the group commit raised OverflowError
    # (every batch in it answered 503), and separate commits left a REAL in SQLite.
    start = (now_ms() - HOUR_MS) // HOUR_MS * HOUR_MS + 60_000
    first = accepted_before_the_bounds(huge_plays(DEVICE, 600, start))
    second = accepted_before_the_bounds(huge_plays("scr-2", 600, start), "scr-2")
    acks = await commit(store, first, second)
    assert [{a[1:] for a in batch_acks} for batch_acks in acks] == [{("accepted", "valid")}] * 2
    later = accepted_before_the_bounds(huge_plays(DEVICE, 600, start, first_seq=601))
    assert {a[1] for a in await commit_one(store, later)} == {"accepted"}
    plays = 1_800
    assert await rollup_measures(store) == [
        ("rollup_content", plays, plays * DAY_MS, "int"),
        ("rollup_device", 600, 600 * DAY_MS, "int"),
        ("rollup_device", 1_200, 1_200 * DAY_MS, "int"),
    ]
    # Whole buckets are read from the rollups, a millisecond's range from the rows.
    for begin, end in ((start - HOUR_MS, start + HOUR_MS), (start, start + 1)):
        [row] = await queries.delivery(store, queries.DeliveryQuery(begin, end))
        assert (row.plays, row.valid, row.played_ms, row.quality_sum) == (
            plays,
            plays,
            plays * DAY_MS,
            100 * plays,
        )


async def test_a_record_past_the_bounds_is_rejected_invalid_and_kept_with_what_was_wrong(
    store: Store,
) -> None:
    now = now_ms()
    records: list[Item] = [
        make_record(seq=1, duration_ms=HUGE),
        make_record(seq=2, expected_ms=DAY_MS + 1),
        make_record(seq=3, start_ts=1_000, end_ts=now - 1_000),
        make_record(seq=4, duration_ms=DAY_MS, expected_ms=DAY_MS),
    ]
    acks = await commit_one(store, batch(records, received_at=now))
    assert acks == [
        (1, "rejected", "invalid"),
        (2, "rejected", "invalid"),
        (3, "rejected", "invalid"),
        (4, "accepted", "valid"),
    ]
    details = {r.seq: r.detail for r in await store.rejects(DEVICE)}
    assert details == {
        1: f"expected duration_ms of at most {DAY_MS}, got {HUGE}",
        2: f"expected expected_ms of at most {DAY_MS}, got {DAY_MS + 1}",
        3: "expected start_ts between 946684800000 and 4102444800000, got 1000",
    }


async def test_opening_a_database_with_rollups_damaged_by_old_code_repairs_them(
    any_url: str, tmp_path: Path
) -> None:
    await at_version_2(any_url)
    store = open_store(any_url, tmp_path / "blobs")
    await store.open()
    try:
        plays, played = len(DURATIONS), 3 * DAY_MS + 15_000
        assert await rollup_measures(store) == [
            ("rollup_content", plays, played, "int"),
            ("rollup_device", plays, played, "int"),
        ]
        for begin, end in ((START, START + HOUR_MS), (START, START + 60_000)):
            [row] = await queries.delivery(store, queries.DeliveryQuery(begin, end))
            assert (row.plays, row.valid, row.played_ms) == (plays, plays, played)
        # A later play in the same bucket adds to the repaired row (on PostgreSQL the
        # damaged row, near the bigint limit, failed every commit adding to it).
        device = IDS[-1]
        late = make_record(device_id=device, journal_id="j-2", seq=1, start_ts=START + 5_000)
        assert await commit_one(store, accepted_before_the_bounds([late], device)) == [
            (1, "accepted", "valid")
        ]
        assert await rollup_measures(store) == [
            ("rollup_content", plays + 1, played + 15_000, "int"),
            ("rollup_device", plays + 1, played + 15_000, "int"),
        ]
    finally:
        await store.close()
