"""The reconciliation oracle, exactly: real journals (ledgers) against a real store.

Records reach the store through the real pipeline pieces (wire encoding,
decoding, checksum, rules, the store's commit), as the service would hand them.
Each test builds one situation and checks the oracle's verdict on it, including
the ones that must fail.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from playproof.device.journal import Journal
from playproof.fleet.reconcile import Reconciliation, reconcile
from playproof.protocol import Record, seal
from playproof.rules import HOUR_MS, MINUTE_MS
from playproof.stores.base import Store
from tests.stores.pipeline import batch
from tests.support import make_record, now_ms

DEVICE = "scr-1"
AGES = itertools.count(1)  # seconds


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = await Journal.open(tmp_path / "device", DEVICE)
    try:
        yield opened
    finally:
        await opened.aclose()


async def recorded(journal: Journal, **fields: object) -> Record:
    """A play begun and sealed in the journal (queued in its ledger).

    Each ends a second before the previous one unless told otherwise: two plays of one
    content starting in the same millisecond are one play counted twice.
    """
    fields.setdefault("end_ts", now_ms() - 1000 * next(AGES))
    start = await journal.begin(make_record(journal_id=journal.journal_id, **fields))
    record = seal(start)
    await journal.close(record)
    return record


async def check(store: Store, journal: Journal) -> Reconciliation:
    return await reconcile(store, [await journal.ledger()])


async def test_every_outcome_is_counted_where_it_belongs(store: Store, journal: Journal) -> None:
    # Distinct times: one play (start and content) under two sequences counts twice.
    now = now_ms()
    valid = await recorded(journal, end_ts=now - 60_000)
    partial = await recorded(journal, end_ts=now - 45_000, end_reason="skipped", duration_ms=2_000)
    resent = await recorded(journal, end_ts=now - 30_000)
    stale = await recorded(journal, end_ts=now - 5 * HOUR_MS)
    waiting = await recorded(journal, end_ts=now - 15_000)
    await store.commit([batch([valid, partial, resent, stale])])
    await journal.remove(
        [valid.seq, partial.seq, resent.seq, stale.seq],
        ["accepted:valid", "accepted:partial", "duplicate", "rejected:stale"],
    )
    await journal.begin(make_record(journal_id=journal.journal_id))  # still playing
    result = await check(store, journal)
    total = result.total
    assert (total.recorded, total.valid, total.partial, total.duplicates) == (6, 2, 1, 1)
    assert (dict(total.rejected), total.queued, total.open) == ({"stale": 1}, 1, 1)
    assert (total.lost, total.double, total.mismatched) == (0, 0, 0), result.findings
    assert result.ok and result.devices[DEVICE].queued == 1 and waiting.seq == 5


async def test_a_record_the_service_does_not_hold_is_lost(store: Store, journal: Journal) -> None:
    kept, dropped = await recorded(journal), await recorded(journal)
    await store.commit([batch([kept])])
    await journal.remove([kept.seq, dropped.seq], ["accepted:valid", "accepted:valid"])
    result = await check(store, journal)
    assert (result.total.lost, result.ok) == (1, False)
    assert [(f.kind, f.seq) for f in result.findings] == [("lost", dropped.seq)]


async def test_a_queued_record_the_service_holds_counts_as_accepted(
    store: Store, journal: Journal
) -> None:
    record = await recorded(journal)  # its ack was lost: the device will resend it
    await store.commit([batch([record])])
    result = await check(store, journal)
    assert (result.total.valid, result.total.queued, result.ok) == (1, 0, True)


async def test_an_evicted_record_is_reported_apart_and_does_not_fail(
    tmp_path: Path, store: Store
) -> None:
    # Room for two queued records of about 450 bytes: the third play evicts the first.
    small = await Journal.open(tmp_path / "small", DEVICE, queue_max_bytes=1000)
    records = [await recorded(small) for _ in range(3)]
    await store.commit([batch(records[1:])])
    result = await reconcile(store, [await small.ledger()])
    await small.aclose()
    assert (result.total.evicted, result.total.valid, result.total.queued) == (1, 2, 0)
    assert result.ok


async def test_an_impression_no_ledger_recorded_is_a_phantom(
    store: Store, journal: Journal
) -> None:
    record = await recorded(journal)
    phantom = make_record(journal_id=journal.journal_id, seq=99)
    await store.commit([batch([record, phantom])])
    result = await check(store, journal)
    assert (result.total.double, result.ok) == (1, False)
    assert [(f.kind, f.seq) for f in result.findings] == [("phantom", 99)]


async def test_impressions_under_a_journal_no_folder_holds_count_twice(
    store: Store, journal: Journal
) -> None:
    await store.commit([batch([make_record(journal_id="j-wiped", seq=1)])])
    result = await check(store, journal)
    assert [f.kind for f in result.findings] == ["unknown_journal"]
    assert not result.ok


async def test_a_record_both_accepted_and_rejected_counts_twice(
    store: Store, journal: Journal
) -> None:
    record = await recorded(journal)
    # Rejected for a skewed batch; the ack was lost; sent again on time: accepted too.
    skewed = now_ms() + 40 * MINUTE_MS
    assert (await store.commit([batch([record], sent_at=skewed, received_at=now_ms())]))[0][
        0
    ].result == "rejected"
    await store.commit([batch([record])])
    await journal.remove([record.seq], ["accepted:valid"])
    result = await check(store, journal)
    assert [f.kind for f in result.findings] == ["accepted_and_rejected"]
    assert (result.total.valid, result.total.double, result.ok) == (1, 1, False)


async def test_a_duplicate_ack_for_nothing_held_is_lost_and_counted_twice(
    store: Store, journal: Journal
) -> None:
    record = await recorded(journal)
    await journal.remove([record.seq], ["duplicate"])
    result = await check(store, journal)
    assert sorted(f.kind for f in result.findings) == ["false_duplicate", "lost"]
    assert (result.total.lost, result.total.double) == (1, 1)


async def test_one_play_under_two_sequences_counts_twice(store: Store, journal: Journal) -> None:
    first = await recorded(journal)
    again = await recorded(journal, start_ts=first.start_ts, end_ts=first.end_ts)
    await store.commit([batch([first, again])])
    result = await check(store, journal)
    assert [f.kind for f in result.findings] == ["two_sequences"]
    assert (result.total.valid, result.total.double) == (2, 1)


async def test_what_the_device_noted_is_cross_checked_with_the_service(
    store: Store, journal: Journal
) -> None:
    record = await recorded(journal)
    await store.commit([batch([record])])
    await journal.remove([record.seq], ["accepted:partial"])  # the service says valid
    result = await check(store, journal)
    assert (result.total.mismatched, result.total.valid, result.ok) == (1, 1, True)
    assert [f.kind for f in result.findings] == ["mismatch"]


async def test_impressions_below_the_ledger_floor_are_outside_its_window(
    tmp_path: Path, store: Store
) -> None:
    day = 24 * HOUR_MS
    device = await Journal.open(tmp_path / "pruned", DEVICE, retention_ms=day)
    old = await recorded(device, end_ts=now_ms() - 3 * HOUR_MS)
    new = await recorded(device)
    await store.commit([batch([old, new])])
    await device.remove([old.seq, new.seq], ["accepted:valid"] * 2)
    await device.aclose()
    device = await Journal.open(tmp_path / "pruned", DEVICE, retention_ms=HOUR_MS)  # prunes
    result = await reconcile(store, [await device.ledger()])
    await device.aclose()
    assert (result.total.outside, result.total.valid, result.total.double) == (1, 1, 0)
    assert result.ok
