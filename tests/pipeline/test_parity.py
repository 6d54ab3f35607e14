"""The pipeline answers every record as the store path does, and the loaders keep the same rows.

Each scenario runs twice over the same judged batches: once straight into a
PostgreSQL store (the store path), once through JetStream (a `JetStreamSink`
answering, a `Loader` filling a second PostgreSQL schema). Acks must be
equal, and so must impressions, rejects (with their `times`), sequence state
and the report rollups.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playproof.pipeline.loader import Loader, wait_loaded
from playproof.pipeline.settings import parse
from playproof.pipeline.sink import JetStreamSink
from playproof.protocol import Ack
from playproof.rules import HOUR_MS, MINUTE_MS
from playproof.stores.base import BatchWrite
from playproof.stores.postgres import PostgresStore
from playproof.stores.rollup import ROLLUPS
from tests.stores.conftest import PG_URL, admin_execute, require_postgres, with_schema
from tests.stores.pipeline import batch, brief, tampered
from tests.stores.test_contract import commits, scenario_writes
from tests.support import make_record, now_ms

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture
def schemas() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL schemas: the store path's, and the one loaders fill."""
    require_postgres()
    names = [f"pp_test_{secrets.token_hex(6)}" for _ in range(2)]
    for name in names:
        admin_execute(f"CREATE SCHEMA {name}")
    try:
        yield with_schema(PG_URL, names[0]), with_schema(PG_URL, names[1])
    finally:
        for name in names:
            admin_execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


class Both:
    """A store on the store path, and a sink with a loader filling another store."""

    def __init__(self, js_url: str, urls: tuple[str, str]) -> None:
        self.settings = parse(js_url)
        self.direct = PostgresStore(urls[0])
        self.loaded = PostgresStore(urls[1])
        self.sink = JetStreamSink(self.settings)
        self.loader = Loader(self.settings, self.loaded)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Both:
        await self.direct.open()
        await self.loaded.open()
        await self.sink.open()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self.loader.run(ready=ready.set))
        await asyncio.wait_for(ready.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.loader.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
        await self.sink.close()
        await self.loaded.close()
        await self.direct.close()

    async def commit(self, writes: list[BatchWrite]) -> tuple[list[list[Ack]], list[list[Ack]]]:
        """The same batches through the pipeline and straight into the store."""
        return await self.sink.commit(writes), await self.direct.commit(writes)

    async def kept(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What each store keeps, once the loaders have caught up."""
        await wait_loaded(self.settings, 30)
        return await kept(self.loaded), await kept(self.direct)


async def kept(store: PostgresStore) -> dict[str, Any]:
    """Every row a commit writes, in a comparable order (ids and neighbour times aside).

    The neighbours' end times of gaps and high-water marks depend on which
    arrivals share a group commit, on either path; the sequences do not.
    """
    rows = {
        "impressions": "SELECT * FROM impressions ORDER BY device_id, journal_id, seq",
        "keys": "SELECT * FROM impression_keys ORDER BY device_id, journal_id, seq",
        "rejects": "SELECT submitted_by, device_id, journal_id, seq, checksum, reason, detail, "
        "raw, sent_at, received_at, skew_ms, times FROM rejects ORDER BY 1, 2, 3, 4, 5, 6, 8, 10",
        "journals": "SELECT device_id, journal_id, high_water FROM journals ORDER BY 1, 2",
        "gaps": "SELECT device_id, journal_id, first_seq, last_seq FROM gaps ORDER BY 1, 2, 3",
    }
    for rollup in ROLLUPS:
        rows[rollup.table] = f"SELECT * FROM {rollup.table} ORDER BY " + ", ".join(
            rollup.columns[: 1 + len(rollup.dims)]
        )
    return {name: await store.read_rows(sql) for name, sql in rows.items()}


@pytest.fixture
async def both(js_url: str, schemas: tuple[str, str]) -> AsyncIterator[Both]:
    """Both paths, opened."""
    async with Both(js_url, schemas) as opened:
        yield opened


async def test_every_kind_of_answer_is_the_store_paths_answer(both: Both) -> None:
    now = now_ms()
    end = now - 2_000
    one, two = make_record(seq=1, end_ts=end), make_record(seq=2, end_ts=end)
    other_two = make_record(seq=2, end_ts=end, campaign_id="cmp-other")
    stale = make_record(seq=4, end_ts=now - 5 * HOUR_MS)
    forged = tampered(make_record(seq=6, end_ts=end), campaign_id="cmp-forged")
    foreign = make_record(seq=7, end_ts=end, device_id="scr-2")
    first = batch([one, two, two, stale, {"seq": 8, "v": 1}, forged, foreign], received_at=now)
    second = batch([one, other_two, make_record(seq=5, end_ts=end)], received_at=now + 10)
    skewed = batch([make_record(seq=9, end_ts=end)], received_at=now + 20, sent_at=now - HOUR_MS)
    late = batch([one], received_at=now + 5 * HOUR_MS)  # stale now, but stored: duplicate

    answers = [await both.commit(group) for group in ([first], [second, skewed], [late])]

    for via_pipeline, via_store in answers:
        assert via_pipeline == via_store
    assert [[[brief(a) for a in acks] for acks in group] for group, _ in answers] == [
        [
            [
                (1, "accepted", "valid"),
                (2, "accepted", "valid"),
                (2, "duplicate", None),
                (4, "rejected", "stale"),
                (8, "rejected", "invalid"),
                (6, "rejected", "bad_checksum"),
                (7, "rejected", "forbidden"),
            ]
        ],
        [
            [(1, "duplicate", None), (2, "rejected", "conflict"), (5, "accepted", "valid")],
            [(9, "rejected", "clock_skew")],
        ],
        [[(1, "duplicate", None)]],
    ]
    loaded, direct = await both.kept()
    assert loaded == direct
    assert len(loaded["impressions"]) == 3
    reasons = ["bad_checksum", "clock_skew", "conflict", "forbidden", "invalid", "stale"]
    assert sorted(r[5] for r in loaded["rejects"]) == reasons
    # 6 (forged) 7 (another device's) and 8 (undecodable) cannot be trusted to fill.
    assert loaded["gaps"] == [("scr-1", "j-1", 3, 3), ("scr-1", "j-1", 6, 8)]


async def test_a_rejected_record_may_be_accepted_later_then_only_duplicates(both: Both) -> None:
    """A rejection does not hold the key: the fixed resend is accepted, further ones duplicate."""
    now = now_ms()
    record = make_record(seq=1, end_ts=now - 2_000)
    skewed = batch([record], received_at=now, sent_at=now - HOUR_MS)
    fixed = batch([record], received_at=now + 10)
    again_skewed = batch([record], received_at=now + 20, sent_at=now + 20 - HOUR_MS)
    conflicting = batch([make_record(seq=1, end_ts=now - 3_000)], received_at=now + 30)

    answers = [await both.commit([w]) for w in (skewed, skewed, fixed, again_skewed, conflicting)]

    assert [a for a, _ in answers] == [s for _, s in answers]
    assert [brief(a[0][0]) for a, _ in answers] == [
        (1, "rejected", "clock_skew"),
        (1, "rejected", "clock_skew"),
        (1, "accepted", "valid"),
        (1, "duplicate", None),
        (1, "rejected", "conflict"),
    ]
    loaded, direct = await both.kept()
    assert loaded == direct
    assert sorted((r[5], r[11]) for r in loaded["rejects"]) == [("clock_skew", 2), ("conflict", 1)]


async def test_a_key_several_times_in_one_group_is_settled_in_arrival_order(both: Both) -> None:
    now = now_ms()
    a = make_record(seq=3, end_ts=now - 2_000)
    b = make_record(seq=3, end_ts=now - 3_000)
    writes = [batch([a, b, a]), batch([b, a], received_at=now + 1)]

    via_pipeline, via_store = await both.commit(writes)

    assert via_pipeline == via_store
    assert [[brief(x)[1:] for x in acks] for acks in via_pipeline] == [
        [("accepted", "valid"), ("rejected", "conflict"), ("duplicate", None)],
        [("rejected", "conflict"), ("duplicate", None)],
    ]
    loaded, direct = await both.kept()
    assert loaded == direct


async def test_flags_and_quality_travel_with_the_record(both: Both) -> None:
    now = now_ms()
    flagged = make_record(seq=1, end_ts=now - 2_000, clock_synced=False, store_id="store-9")
    write = batch([flagged], received_at=now, sent_at=now + 15 * MINUTE_MS)

    via_pipeline, via_store = await both.commit([write])

    assert via_pipeline == via_store
    [[ack]] = via_pipeline
    assert (ack.quality, sorted(ack.flags or [])) == (
        30,
        ["clock_skew", "clock_unsynced", "store_mismatch"],
    )
    loaded, direct = await both.kept()
    assert loaded == direct


_examples = count()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=st.lists(commits, min_size=1, max_size=5))
def test_any_input_is_answered_and_kept_alike_on_both_paths(
    scenario: list[Any], js_url: str, schemas: tuple[str, str]
) -> None:
    """Generated batches (resends, conflicts, forgeries, foreign and undecodable records, late
    resends) get the same acks through JetStream as on the store path, and the same rows."""
    device = f"scr-js-{next(_examples)}"
    groups = scenario_writes(device, scenario)

    async def run() -> None:
        async with Both(js_url, schemas) as pair:
            for group in groups:
                via_pipeline, via_store = await pair.commit(group)
                assert via_pipeline == via_store
            loaded, direct = await pair.kept()
            assert loaded == direct

    asyncio.run(run())
