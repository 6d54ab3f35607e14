"""Reports on both stores: the delivery report equals an aggregate computed from the rows.

The report reads rollups where it can and rows where it must; whatever it
reads, for any grouping, filter, time zone and range, it must give exactly
what summing the impression rows gives. The oracle here does that in Python,
from the rows, with zoneinfo's offsets.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playproof.protocol import seal
from playproof.rules import HOUR_MS, MINUTE_MS, Context, judge
from playproof.stores import open_store, queries
from playproof.stores.base import IMPRESSION_COLUMNS, BatchWrite, Judged, Store
from playproof.stores.rollup import DIMENSIONS, ROLLUPS, rollup_deltas
from playproof.stores.timezones import offset_ms, offset_pieces
from tests.stores.conftest import query
from tests.support import make_record

DAY_MS = 24 * HOUR_MS
# Around the 2026 spring transitions: New York (8 March), London (29 March),
# Lord Howe (5 April, by half an hour), Chatham (5 April, +12:45 → +13:45).
T0 = int(datetime(2026, 3, 6, tzinfo=UTC).timestamp() * 1000)
T1 = int(datetime(2026, 4, 8, tzinfo=UTC).timestamp() * 1000)
ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "Pacific/Chatham",
]
VALUES = {
    "campaign_id": ["cmp-a", "cmp-b", "cmp-c"],
    "ad_group_id": ["ag-1", "ag-2", "ag-3"],
    "content_id": ["cnt-1", "cnt-2", "cnt-3", "cnt-4"],
    "supplier_id": ["sup-1", "sup-2"],
    "store_id": ["store-1", "store-2"],
    "device_id": ["scr-r1", "scr-r2", "scr-r3"],
}
ROW_COLUMNS = (*DIMENSIONS, "start_ts", "status", "duration_ms", "quality")


def plays(rng: random.Random, n: int) -> Iterator[Any]:
    """`n` plays at random moments of the window, some on bucket and transition boundaries."""
    edges = [T0, T0 + HOUR_MS, int(datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp() * 1000)]
    seqs = dict.fromkeys(VALUES["device_id"], 0)
    for i in range(n):
        device = rng.choice(VALUES["device_id"])
        seqs[device] += 1
        start = rng.choice(edges) if i % 50 == 0 else rng.randrange(T0, T1)
        expected = rng.choice([10_000, 15_000, 30_000])
        played = expected if rng.random() < 0.7 else rng.randrange(0, expected * 2)
        fields = {name: rng.choice(VALUES[name]) for name in DIMENSIONS if name != "device_id"}
        yield make_record(
            device_id=device,
            seq=seqs[device],
            start_ts=start,
            end_ts=start + played,
            duration_ms=played,
            expected_ms=expected,
            end_reason=rng.choice(["completed", "completed", "completed", "skipped"]),
            clock_synced=rng.random() < 0.8,
            **fields,
        )


def write(records: list[Any]) -> BatchWrite:
    """A batch of one device's records, each judged as if sent just after it ended."""
    device = records[0].device_id
    judged = []
    for record in records:
        sent = record.end_ts + 1_000
        judged.append(Judged(record, judge(record, Context(device, "store-1", sent, sent))))
    received = max(r.end_ts for r in records) + 1_000
    return BatchWrite(device, received, received, judged)


async def seed(store: Store, n: int = 2_500) -> None:
    """Commit `n` plays in groups, then resend some (duplicates) and change some (conflicts)."""
    rng = random.Random(20260306)
    records = list(plays(rng, n))
    by_device: dict[str, list[Any]] = {}
    for record in records:
        by_device.setdefault(record.device_id, []).append(record)
    batches = [write(rs[i : i + 100]) for rs in by_device.values() for i in range(0, len(rs), 100)]
    for i in range(0, len(batches), 4):
        await store.commit(batches[i : i + 4])
    resent = [write(by_device["scr-r1"][:30])]
    changed = [r.__copy__() for r in by_device["scr-r2"][:10]]
    for record in changed:
        record.campaign_id = "cmp-changed"
        seal(record)
    acks = await store.commit([*resent, write(changed)])
    assert {a.result for a in acks[0]} == {"duplicate"}
    assert {a.reason for a in acks[1]} == {"conflict"}


async def stored_rows(store: Store) -> list[tuple[Any, ...]]:
    """Every impression's dimensions, start, status, duration and quality."""
    return await query(store, f"SELECT {', '.join(ROW_COLUMNS)} FROM impressions")


def oracle(rows: list[tuple[Any, ...]], wanted: queries.DeliveryQuery) -> list[Any]:
    """The delivery report computed from the rows themselves."""
    totals: dict[tuple[Any, ...], list[int]] = {}
    index = {name: i for i, name in enumerate(ROW_COLUMNS)}
    for row in rows:
        start = row[index["start_ts"]]
        if not wanted.start <= start < wanted.end:
            continue
        if any(row[index[name]] != value for name, value in wanted.filters):
            continue
        off = offset_ms(wanted.zone, start // 1000)
        key = []
        for name in wanted.group_by:
            if name == "hour":
                key.append((start + off) // HOUR_MS * HOUR_MS - off)
            elif name == "day":
                key.append((start + off) // DAY_MS * DAY_MS)
            else:
                key.append(row[index[name]])
        sums = totals.setdefault(tuple(key), [0, 0, 0, 0])
        sums[0] += 1
        sums[1] += row[index["status"]] == "valid"
        sums[2] += row[index["duration_ms"]]
        sums[3] += row[index["quality"]]
    return [queries.DeliveryRow(k, *v) for k, v in sorted(totals.items())]


@pytest.fixture
def seeded(any_url: str, tmp_path: Path) -> str:
    """A store of either kind holding the seeded plays."""

    async def run() -> None:
        store = open_store(any_url, tmp_path / "blobs")
        await store.open()
        try:
            await seed(store)
        finally:
            await store.close()

    asyncio.run(run())
    return any_url


async def report_and_oracle(url: str, wanted: queries.DeliveryQuery) -> tuple[Any, Any]:
    store = open_store(url, Path("/nonexistent-blobs"))
    await store.open()
    try:
        return await queries.delivery(store, wanted), oracle(await stored_rows(store), wanted)
    finally:
        await store.close()


moments = st.one_of(
    st.integers(T0 - DAY_MS, T1),
    st.integers(T0 // HOUR_MS, T1 // HOUR_MS).map(lambda h: h * HOUR_MS),
    st.integers(T0 // (15 * MINUTE_MS), T1 // (15 * MINUTE_MS)).map(lambda q: q * 15 * MINUTE_MS),
)
lengths = st.one_of(
    st.integers(1, 40 * DAY_MS), st.sampled_from([HOUR_MS, DAY_MS, 7 * DAY_MS, 40 * DAY_MS])
)
filters = st.lists(
    st.sampled_from(DIMENSIONS).flatmap(
        lambda d: st.tuples(st.just(d), st.sampled_from(VALUES[d]))
    ),
    max_size=2,
    unique_by=lambda f: f[0],
)
deliveries = st.builds(
    lambda start, length, groups, where, zone: queries.DeliveryQuery(
        start, start + length, tuple(groups), tuple(where), ZoneInfo(zone)
    ),
    moments,
    lengths,
    st.lists(st.sampled_from(queries.GROUPS), unique=True, max_size=3),
    filters,
    st.sampled_from(ZONES),
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(wanted=deliveries)
def test_the_delivery_report_equals_the_sum_of_the_rows(
    seeded: str, wanted: queries.DeliveryQuery
) -> None:
    """Any grouping, filter, zone and range: rollups and rows give exactly the rows' sums."""
    report, expected = asyncio.run(report_and_oracle(seeded, wanted))
    assert report == expected


@pytest.mark.parametrize(
    ("zone", "groups", "source"),
    [
        ("UTC", ("campaign_id", "day"), "rollup_content"),
        ("Asia/Kathmandu", ("campaign_id", "hour"), "rollup_content"),
        ("UTC", ("device_id", "day"), "rollup_device"),
        ("Asia/Kolkata", ("device_id", "day"), None),
    ],
)
def test_the_report_reads_the_smallest_rollup_that_fits_and_rows_for_the_edges(
    zone: str, groups: tuple[str, ...], source: str | None
) -> None:
    wanted = queries.DeliveryQuery(T0 + 7 * MINUTE_MS, T1 + 5, groups, (), ZoneInfo(zone))
    parts = queries.plan(wanted, offset_pieces(wanted.zone, wanted.start, wanted.end))
    sources = [p.source.table if p.source else None for p in parts]
    if source is None:
        assert sources == [None]
    else:
        assert sources == [None, source, None]
        middle = parts[1]
        assert middle.source is not None and middle.end == T1
        assert middle.start % middle.source.bucket_ms == 0 < middle.start - wanted.start
    assert parts[0].start == wanted.start and parts[-1].end == wanted.end


async def test_the_rollups_hold_exactly_the_rows_sums_despite_duplicates_and_conflicts(
    store: Store,
) -> None:
    await seed(store, 600)
    rows = await query(store, f"SELECT {', '.join(IMPRESSION_COLUMNS)} FROM impressions")
    expected = rollup_deltas(rows)
    for rollup in ROLLUPS:
        keys = ", ".join(rollup.columns[: 1 + len(rollup.dims)])
        stored = await query(
            store, f"SELECT {', '.join(rollup.columns)} FROM {rollup.table} ORDER BY {keys}"
        )
        assert stored == expected[rollup]


async def test_upgrading_a_version_1_database_builds_the_rollups_from_its_rows(
    any_url: str, tmp_path: Path
) -> None:
    store = open_store(any_url, tmp_path / "blobs")
    await store.open()
    await seed(store, 400)
    await store.close()
    await _back_to_version_1(any_url)
    store = open_store(any_url, tmp_path / "blobs")
    await store.open()
    try:
        wanted = queries.DeliveryQuery(T0, T1, ("campaign_id", "day"))
        assert queries.plan(wanted, ((T0, 0),))[0].source is not None
        report = await queries.delivery(store, wanted)
        assert report == oracle(await stored_rows(store), wanted)
        assert sum(r.plays for r in report) == len(await stored_rows(store)) > 0
    finally:
        await store.close()


async def _back_to_version_1(url: str) -> None:
    """Drop what migrations 2 and later made, as if the database had never had it."""
    drops = [
        "DROP TABLE operators",
        "DROP TABLE rollup_content",
        "DROP TABLE rollup_device",
        "DROP INDEX impressions_start",
        "DROP INDEX rejects_reason",
        "ALTER TABLE rejects DROP COLUMN replayed_at",
        "ALTER TABLE rejects DROP COLUMN replay_result",
        "DROP TABLE catalog_entries",
        "DROP TABLE catalog_changes",
        "DROP TABLE content_references",
        "DROP TABLE screenshot_facts",
        "DROP TABLE verification_log",
        "DROP TABLE rollup_verification",
        "DROP INDEX impressions_pending",
        "DROP INDEX IF EXISTS impressions_device_start",
        "ALTER TABLE impressions DROP COLUMN verification_reasons",
        "ALTER TABLE impressions DROP COLUMN verified_at",
        "DROP TABLE statements",
        "DROP TABLE export_plays",
        "DROP TABLE rollup_verification_line",
        "DROP TABLE exports",
        "ALTER TABLE journals DROP COLUMN gap_count",
        "ALTER TABLE journals DROP COLUMN suspect",
        "DROP TABLE device_changes",
        "DROP TABLE key_log",
        "DROP TABLE device_keys",
        "ALTER TABLE devices DROP COLUMN self_enrol",
        "ALTER TABLE devices DROP COLUMN signatures_required",
        "ALTER TABLE impressions DROP COLUMN key_id",
        "ALTER TABLE impressions DROP COLUMN panel_source",
        "ALTER TABLE impressions DROP COLUMN panel_state",
        "ALTER TABLE impressions DROP COLUMN sig",
    ]
    if url.startswith("sqlite"):
        import sqlite3

        triggers = [
            f"DROP TRIGGER devices_{change}" for change in ("inserted", "updated", "deleted")
        ]
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            for sql in [*triggers, *drops, "PRAGMA user_version = 1"]:
                conn.execute(sql)
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        triggers = [
            "DROP TRIGGER devices_changed ON devices",
            "DROP TRIGGER device_keys_changed ON device_keys",
            "DROP FUNCTION device_changed",
        ]
        for sql in [*triggers, *drops, "DELETE FROM schema_version WHERE version >= 2"]:
            await conn.execute(sql.encode())


async def test_pages_of_impressions_follow_the_key_and_resume_after_it(store: Store) -> None:
    await seed(store, 300)
    everything = await queries.impressions(store, queries.ImpressionQuery())
    keys = [(r[8], r[0], r[1], r[2]) for r in everything]
    assert keys == sorted(keys) and len(keys) == 300
    pages, after = [], None
    while True:
        page = await queries.impressions(store, queries.ImpressionQuery(after=after, limit=70))
        pages.extend(page)
        if len(page) < 70:
            break
        last = page[-1]
        after = (last[8], last[0], last[1], last[2])
    assert pages == everything
    streamed = [
        row
        async for rows in queries.export_impressions(store, queries.ImpressionQuery(), chunk=64)
        for row in rows
    ]
    assert streamed == everything


@pytest.mark.parametrize("zone", ZONES)
def test_offset_pieces_agree_with_zoneinfo_at_every_hour(zone: str) -> None:
    tz = ZoneInfo(zone)
    pieces = offset_pieces(tz, T0, T1)
    for at in range(T0, T1, HOUR_MS // 4):
        expected = offset_ms(tz, at // 1000)
        in_force = [off for since, off in pieces if since <= at] or [pieces[0][1]]
        assert in_force[-1] == expected, (zone, at)
