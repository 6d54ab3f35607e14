"""The verification report on both stores: exactly a count over the decided impression rows.

Plays are decided by the real verifier against a catalog that fails them for
many reasons (unknown campaign, flight and daypart, target, content, supplier,
cap, overlap, quality), a few are left pending and some are partial. The
report reads the verification rollup for whole hours and rows for the rest;
whatever it reads, for any grouping, filter, zone and range, it must give what
counting the impression rows in Python gives, with zoneinfo's local times.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playproof.rules import HOUR_MS, Context, judge
from playproof.server import verification_report
from playproof.server.formats import rfc3339
from playproof.server.verifier import Verifier
from playproof.stores import open_store, queries
from playproof.stores import verification_report as vr
from playproof.stores.base import BatchWrite, DeviceInfo, Judged, Store
from playproof.verification import REASONS
from tests.stores.conftest import query
from tests.stores.pipeline import batch
from tests.stores.test_reports import T0, T1, ZONES
from tests.stores.test_verification import import_catalog
from tests.support import make_record

DAY_MS = 24 * HOUR_MS
NOW = T1 + 2 * DAY_MS  # the verifier's clock: every play but the last batch has settled
DEVICES = {"scr-v1": "store-1", "scr-v2": "store-1", "scr-v3": "store-2"}
VALUES = {
    "campaign_id": ["cmp-a", "cmp-a", "cmp-b", "cmp-x"],
    "ad_group_id": ["ag-1", "ag-1", "ag-2"],
    "content_id": ["cnt-1", "cnt-2", "cnt-3"],
    "supplier_id": ["sup-1", "sup-1", "sup-2"],
    "store_id": ["store-1", "store-1", "store-2"],
}
ROW_COLUMNS = (*vr.DIMENSIONS, "start_ts", "status", "verification", "verification_reasons")


def catalog() -> dict[str, Any]:
    """Two campaigns booked with flights, dayparts, targets, caps and quality; cmp-x is not."""
    common = {"price": {"model": "per_play", "amount": "0.01", "currency": "EUR"}}
    return {
        "suppliers": [
            {"supplier_id": "sup-1", "name": "One", "currency": "EUR"},
            {"supplier_id": "sup-2", "name": "Two", "currency": "EUR"},
        ],
        "stores": [
            {"store_id": "store-1", "time_zone": "Europe/London"},
            {"store_id": "store-2", "time_zone": "America/New_York"},
        ],
        "devices": [{"device_id": d, "zones": 1} for d in DEVICES],
        "contents": [{"content_id": c, "expected_ms": 15000} for c in ("cnt-1", "cnt-2", "cnt-3")],
        "campaigns": [
            {
                "campaign_id": "cmp-a",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-03-01", "to": "2026-05-01"},
                "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1", "cnt-2"]}],
                "cap": {"plays_per_screen_per_day": 2},
                "min_quality": 90,
                **common,
            },
            {
                "campaign_id": "cmp-b",
                "supplier_id": "sup-2",
                "flight": {
                    "from": "2026-03-15",
                    "to": "2026-04-01",
                    "dayparts": [{"days": "mon-fri", "from": "08:00", "to": "20:00"}],
                },
                "targets": {"stores": ["store-1"], "devices": []},
                "ad_groups": [{"ad_group_id": "ag-2", "contents": ["cnt-3"]}],
                **common,
            },
        ],
    }


def plays(rng: random.Random, device: str, n: int) -> list[Any]:
    """`n` plays of one screen in time order, most booked as sold; some overlap, are partial,
    unsynced or booked otherwise."""
    starts = sorted(rng.randrange(T0, T1) for _ in range(n))
    records = []
    for seq, start in enumerate(starts, 1):
        if seq > 1 and rng.random() < 0.1:
            start = records[-1].start_ts + rng.choice([1_000, 13_500, 13_499])
        played = 15_000 if rng.random() < 0.85 else rng.randrange(1_000, 11_000)
        fields = {name: rng.choice(values) for name, values in VALUES.items()}
        if rng.random() < 0.6:  # booked as sold, so that caps fill up
            fields = {name: values[0] for name, values in VALUES.items()}
            fields["store_id"] = DEVICES[device]
        records.append(
            make_record(
                device_id=device,
                seq=seq,
                start_ts=start,
                end_ts=start + played,
                duration_ms=played,
                end_reason="completed" if played == 15_000 else "skipped",
                clock_synced=rng.random() < 0.85,
                **fields,
            )
        )
    return records


def write(records: list[Any], received: int) -> BatchWrite:
    """One screen's batch, each record judged as if sent just after it ended."""
    device = records[0].device_id
    judged = []
    for record in records:
        sent = record.end_ts + 1_000
        judged.append(Judged(record, judge(record, Context(device, DEVICES[device], sent, sent))))
    return BatchWrite(device, received, received, judged)


async def seed(store: Store, per_device: int = 300) -> None:
    """Decided plays on three screens, and the last batch of one still pending."""
    rng = random.Random(20260329)
    for device, store_id in DEVICES.items():
        await store.add_device(DeviceInfo(device, store_id, T0, None), f"hash-{device}")
    await import_catalog(store, catalog())
    for device in DEVICES:
        records = plays(rng, device, per_device)
        for i in range(0, len(records) - 40, 50):
            chunk = records[i : min(i + 50, len(records) - 40)]
            await store.commit([write(chunk, max(r.end_ts for r in chunk) + 1_000)])
        # Received just now: not settled, so left pending by the verifier below.
        await store.commit([write(records[-40:], NOW if device == "scr-v2" else T1)])
    assert await Verifier(store, clock=lambda: NOW).drain() > 0


async def stored_rows(store: Store) -> list[tuple[Any, ...]]:
    return await query(store, f"SELECT {', '.join(ROW_COLUMNS)} FROM impressions")


def local_label(name: str, start: int, zone: ZoneInfo) -> str:
    """The local day, or the local clock hour as the instant it began, of a start (zoneinfo's).

    The hour is the delivery report's: the start's local time floored to the hour, less
    the offset in force at the start (so Chatham's repeated hour keeps its instants apart).
    """
    local = datetime.fromtimestamp(start / 1000, zone)
    if name == "day":
        return local.date().isoformat()
    offset = local.utcoffset()
    assert offset is not None
    off = int(offset.total_seconds() * 1000)
    return rfc3339((start + off) // HOUR_MS * HOUR_MS - off) or ""


def oracle(rows: list[tuple[Any, ...]], wanted: queries.DeliveryQuery) -> dict[Any, list[int]]:
    """Per group: [valid, verified, failed, pending], or with `reason`: [failed] per reason."""
    col = {name: i for i, name in enumerate(ROW_COLUMNS)}
    by_reason = "reason" in wanted.group_by
    found: dict[Any, list[int]] = {}
    for row in rows:
        start = row[col["start_ts"]]
        if not wanted.start <= start < wanted.end:
            continue
        if any(row[col[name]] != value for name, value in wanted.filters):
            continue
        reasons = (row[col["verification_reasons"]] or "").split(",") if by_reason else [""]
        for reason in reasons:
            if by_reason and (row[col["verification"]] != "failed" or not reason):
                continue
            key = tuple(
                reason
                if name == "reason"
                else local_label(name, start, wanted.zone)  # type: ignore[arg-type]
                if name in ("hour", "day")
                else row[col[name]]
                for name in wanted.group_by
            )
            if by_reason:
                found.setdefault(key, [0])[0] += 1
                continue
            sums = found.setdefault(key, [0, 0, 0, 0])
            valid = row[col["status"]] == "valid"
            sums[0] += valid
            sums[1] += row[col["verification"]] == "verified"
            sums[2] += row[col["verification"]] == "failed"
            sums[3] += valid and row[col["verification"]] == "pending"
    return {k: v for k, v in found.items() if any(v)}


@pytest.fixture
def seeded(any_url: str, tmp_path: Path) -> str:
    """A store of either kind holding the decided plays."""

    async def run() -> None:
        store = open_store(any_url, tmp_path / "blobs")
        await store.open()
        try:
            await seed(store)
        finally:
            await store.close()

    asyncio.run(run())
    return any_url


def as_params(wanted: queries.DeliveryQuery, zone: str) -> dict[str, str]:
    """The request a query is: RFC 3339 times (exact to the millisecond), groups, filters."""
    params = {"from": rfc3339(wanted.start) or "", "to": rfc3339(wanted.end) or "", "tz": zone}
    if wanted.group_by:
        params["group_by"] = ",".join(wanted.group_by)
    return {**params, **dict(wanted.filters)}


async def report_and_rows(url: str, params: dict[str, str]) -> tuple[Any, list[Any]]:
    store = open_store(url, Path("/nonexistent-blobs"))
    await store.open()
    try:
        return await verification_report.verification(store, params), await stored_rows(store)
    finally:
        await store.close()


def check(table: Any, rows: list[Any], wanted: queries.DeliveryQuery) -> None:
    """The report's rows, order and totals against the oracle's count."""
    width = len(wanted.group_by)
    got = {tuple(row[:width]): row[width:] for row in table.rows}
    expected = oracle(rows, wanted)
    assert got == expected
    reason_at = wanted.group_by.index("reason") if "reason" in wanted.group_by else None
    keys = [
        tuple(REASONS.index(v) if i == reason_at else v for i, v in enumerate(row[:width]))
        for row in table.rows
    ]
    assert keys == sorted(keys), "by group, reasons in their table's order"
    totals = table.meta["totals"]
    if "reason" in wanted.group_by:
        assert totals["failures"] == sum(v[0] for v in expected.values())
        failed = oracle(rows, wanted._replace(group_by=()))
        assert totals["failed_plays"] == failed.get((), [0, 0, 0])[2]
    else:
        sums = [sum(v[i] for v in expected.values()) for i in range(4)]
        assert [totals[n] for n in ("valid", "verified", "failed", "pending")] == sums


moments = st.one_of(
    st.integers(T0 - DAY_MS, T1),
    st.integers(T0 // HOUR_MS, T1 // HOUR_MS).map(lambda h: h * HOUR_MS),
)
lengths = st.one_of(
    st.integers(1, 40 * DAY_MS), st.sampled_from([HOUR_MS, DAY_MS, 7 * DAY_MS, 40 * DAY_MS])
)
FILTER_VALUES = {**VALUES, "device_id": list(DEVICES)}
filters = st.lists(
    st.sampled_from(vr.DIMENSIONS).flatmap(
        lambda d: st.tuples(st.just(d), st.sampled_from(FILTER_VALUES[d]))
    ),
    max_size=2,
    unique_by=lambda f: f[0],
)
reports = st.builds(
    lambda start, length, groups, where, zone: (
        queries.DeliveryQuery(start, start + length, tuple(groups), tuple(where), ZoneInfo(zone)),
        zone,
    ),
    moments,
    lengths,
    st.lists(st.sampled_from(vr.GROUPS), unique=True, max_size=3),
    filters,
    st.sampled_from(ZONES),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(asked=reports)
def test_the_verification_report_equals_a_count_of_the_decided_rows(
    seeded: str, asked: tuple[queries.DeliveryQuery, str]
) -> None:
    """Any grouping (with or without reason), filter, zone and range: exactly the rows' count."""
    wanted, zone = asked
    table, rows = asyncio.run(report_and_rows(seeded, as_params(wanted, zone)))
    check(table, rows, wanted)


async def test_the_seeded_plays_fail_for_many_reasons_and_some_wait(store: Store) -> None:
    """The oracle is worth something only if the plays it counts are varied."""
    await seed(store, per_device=120)
    rows = await stored_rows(store)
    statuses = Counter(r[-2] for r in rows)
    assert statuses["verified"] and statuses["failed"] and statuses["pending"] and statuses[None]
    reasons = Counter(x for r in rows if r[-1] for x in r[-1].split(","))
    assert {"unknown_campaign", "outside_flight", "not_targeted", "overlap", "over_cap"} <= set(
        reasons
    )
    assert any("," in (r[-1] or "") for r in rows), "some plays fail for several reasons"


@pytest.mark.parametrize(
    ("zone", "groups", "from_rollup"),
    [
        ("Europe/London", ("campaign_id", "day"), True),
        ("Asia/Kathmandu", ("reason", "device_id"), True),  # no time group: the zone is moot
        ("Asia/Kathmandu", ("reason", "day"), False),  # +05:45 days split hour buckets
        ("Asia/Kolkata", ("hour",), False),
    ],
)
def test_whole_hours_are_read_from_the_rollup_where_its_buckets_fit_and_edges_from_rows(
    zone: str, groups: tuple[str, ...], from_rollup: bool
) -> None:
    wanted = queries.DeliveryQuery(T0 + 7 * 60_000, T1 + 5, groups, (), ZoneInfo(zone))
    parts = queries.plan(wanted, vr.pieces_for(wanted), (vr.ROLLUP,))
    sources = [p.source for p in parts]
    assert sources == ([None, vr.ROLLUP, None] if from_rollup else [None])
    assert parts[0].start == wanted.start and parts[-1].end == wanted.end
    if from_rollup:
        assert parts[1].start % HOUR_MS == 0 and parts[1].end == T1


def execute(url: str, sql: str, *params: Any) -> None:
    """One write straight to the database (`?` placeholders), as another program would."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql, params)
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.replace("?", "%s").encode(), params)


async def test_a_reason_filter_matches_whole_reasons_only(store: Store) -> None:
    """`over_cap` is not `overXcap` (`_` is a LIKE wildcard), nor `overlap` in `overlapping`."""
    base = NOW - HOUR_MS
    plays = [
        make_record(seq=s, start_ts=base + s * 20_000, end_ts=base + s * 20_000 + 15_000)
        for s in range(1, 5)
    ]
    await store.commit([batch(plays, received_at=base + HOUR_MS)])
    stored = ["overlap", "overlapping", "over_cap", "overXcap,low_quality"]
    for seq, reasons in enumerate(stored, 1):
        execute(
            store.url,
            "UPDATE impressions SET verification = 'failed', verification_reasons = ? "
            "WHERE seq = ?",
            reasons,
            seq,
        )
    for reason, seqs in [("overlap", [1]), ("over_cap", [3]), ("low_quality", [4])]:
        wanted = queries.ImpressionQuery(filters=(("verification_reason", reason),))
        assert [row[2] for row in await queries.impressions(store, wanted)] == seqs, reason
