"""The store contract: every test runs against SQLite and PostgreSQL alike.

Inputs go through the real pipeline pieces (wire encoding, decoding, checksum,
rules), so that what each store sees is what the ingest service would hand it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playproof.errors import Conflict, NotFound
from playproof.protocol import Status
from playproof.rules import HOUR_MS, MINUTE_MS, Gap
from playproof.stores import open_store
from playproof.stores.base import BatchWrite, DeviceInfo, OperatorInfo, Store
from tests.stores.conftest import query
from tests.stores.pipeline import DEVICE, Item, batch, commit, commit_one, tampered
from tests.support import make_record, now_ms

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 32


async def stored(store: Store, device_id: str = DEVICE) -> list[tuple[object, ...]]:
    return await query(
        store,
        "SELECT journal_id, seq, checksum FROM impressions WHERE device_id = ? "
        "ORDER BY journal_id, seq",
        device_id,
    )


# --- ingest acks --------------------------------------------------------------


async def test_new_records_are_accepted_in_order_with_status_quality_and_flags(
    store: Store,
) -> None:
    records = [
        make_record(seq=3),
        make_record(seq=1, end_reason="skipped", duration_ms=2_000),
        make_record(seq=2, clock_synced=False),
    ]
    acks = (await store.commit([batch(records)]))[0]
    assert [(a.seq, a.result, a.status) for a in acks] == [
        (3, "accepted", "valid"),
        (1, "accepted", "partial"),
        (2, "accepted", "valid"),
    ]
    assert (acks[0].quality, acks[0].flags) == (100, [])
    assert acks[2].flags == ["clock_unsynced"]
    assert acks[2].quality < 100
    assert [row[1] for row in await stored(store)] == [1, 2, 3]


async def test_accepted_rows_keep_the_record_and_the_verdict(store: Store) -> None:
    record = make_record(seq=1, store_id="store-9")
    write = batch([record])
    await store.commit([write])
    rows = await query(
        store,
        "SELECT store_id, duration_ms, checksum, status, quality, flags, verification, "
        "received_at, skew_ms FROM impressions WHERE device_id = ?",
        DEVICE,
    )
    verdict = ("valid", 80, "store_mismatch", "pending")
    assert rows == [("store-9", 15_000, record.checksum, *verdict, write.received_at, 0)]


async def test_an_empty_commit_answers_nothing(store: Store) -> None:
    assert await commit(store, batch([])) == [[]]


# --- dedupe and conflicts -----------------------------------------------------


async def test_a_resent_record_is_a_duplicate_and_stored_once(store: Store) -> None:
    records = [make_record(seq=s) for s in (1, 2)]
    await commit_one(store, batch(records))
    assert await commit_one(store, batch(records)) == [
        (1, "duplicate", None),
        (2, "duplicate", None),
    ]
    assert len(await stored(store)) == 2


async def test_the_same_key_with_another_checksum_is_a_conflict_kept_in_rejects(
    store: Store,
) -> None:
    original = make_record(seq=1)
    await commit_one(store, batch([original]))
    changed = make_record(seq=1, campaign_id="cmp-other")
    assert await commit_one(store, batch([changed])) == [(1, "rejected", "conflict")]
    assert await stored(store) == [("j-1", 1, original.checksum)]
    [reject] = await store.rejects(DEVICE)
    assert (reject.reason, reject.checksum, reject.seq) == ("conflict", changed.checksum, 1)
    assert original.checksum in reject.detail
    assert json.loads(reject.raw)["campaign_id"] == "cmp-other"


async def test_dedupe_comes_before_the_rules(store: Store) -> None:
    record = make_record(seq=1)
    await commit_one(store, batch([record]))
    late = now_ms() + 5 * HOUR_MS  # resent five hours on: stale by now
    changed = make_record(seq=1, campaign_id="cmp-other", end_ts=record.end_ts)
    assert await commit_one(store, batch([changed], received_at=late)) == [
        (1, "rejected", "conflict")
    ]
    assert await commit_one(store, batch([record], received_at=late)) == [(1, "duplicate", None)]
    fresh_but_stale = make_record(seq=2, end_ts=record.end_ts)
    assert await commit_one(store, batch([fresh_but_stale], received_at=late)) == [
        (2, "rejected", "stale")
    ]


async def test_repeats_within_one_batch_and_one_commit_are_duplicates_or_conflicts(
    store: Store,
) -> None:
    one, two = make_record(seq=1), make_record(seq=2)
    other_two = make_record(seq=2, content_id="cnt-other")
    first = batch([one, one, two])
    second = batch([two, other_two, make_record(seq=3)])
    assert await commit(store, first, second) == [
        [(1, "accepted", "valid"), (1, "duplicate", None), (2, "accepted", "valid")],
        [(2, "duplicate", None), (2, "rejected", "conflict"), (3, "accepted", "valid")],
    ]
    assert [row[1] for row in await stored(store)] == [1, 2, 3]


async def test_journals_and_devices_are_separate_key_spaces(store: Store) -> None:
    records = [
        make_record(seq=1, journal_id="j-a"),
        make_record(seq=1, journal_id="j-b"),
        make_record(seq=1, device_id="scr-2"),
    ]
    assert await commit(store, batch(records[:2]), batch(records[2:], "scr-2")) == [
        [(1, "accepted", "valid"), (1, "accepted", "valid")],
        [(1, "accepted", "valid")],
    ]


# --- rejects ----------------------------------------------------------------


async def test_every_rule_rejection_is_answered_and_kept_with_the_raw_record(
    store: Store,
) -> None:
    now = now_ms()
    items = [
        make_record(seq=1, end_ts=now - 5 * HOUR_MS),
        make_record(seq=2, end_ts=now + 10_000),
        make_record(seq=3, start_ts=now, end_ts=now - 1_000),
        tampered(make_record(seq=4), campaign_id="cmp-forged"),
        make_record(seq=5, device_id="scr-other"),
        {"seq": 6, "device_id": DEVICE},
        {"nonsense": True},
    ]
    acks = await commit_one(store, batch(items, received_at=now))
    assert acks == [
        (1, "rejected", "stale"),
        (2, "rejected", "future_timestamp"),
        (3, "rejected", "invalid"),
        (4, "rejected", "bad_checksum"),
        (5, "rejected", "forbidden"),
        (6, "rejected", "invalid"),
        (None, "rejected", "invalid"),
    ]
    rejects = await store.rejects(DEVICE, limit=50)
    assert [(r.seq, r.reason) for r in rejects] == [(s, r) for s, _, r in reversed(acks)]
    assert all(r.submitted_by == DEVICE and r.received_at == now and r.times == 1 for r in rejects)
    by_seq = {r.seq: r for r in rejects}
    assert json.loads(by_seq[4].raw)["campaign_id"] == "cmp-forged"
    assert by_seq[5].device_id == "scr-other"
    assert by_seq[6].device_id is None and "missing required field" in by_seq[6].detail
    assert json.loads(by_seq[None].raw) == {"nonsense": True}
    assert await stored(store) == []


async def test_an_undecodable_record_quoting_odd_characters_is_kept_as_sent(
    store: Store,
) -> None:
    odd = {"seq": 3, "device_id": DEVICE, "end_reason": "\u0000\u00e9\u2028", "v": "one"}
    assert await commit_one(store, batch([odd])) == [(3, "rejected", "invalid")]
    [reject] = await store.rejects(DEVICE)
    assert json.loads(reject.raw) == odd


async def test_a_batch_skewed_past_30_minutes_is_rejected_whole(store: Store) -> None:
    now = now_ms()
    records = [make_record(seq=s, end_ts=now + 40 * MINUTE_MS) for s in (1, 2)]
    acks = await commit_one(store, batch(records, sent_at=now + 45 * MINUTE_MS, received_at=now))
    assert acks == [(1, "rejected", "clock_skew"), (2, "rejected", "clock_skew")]


async def test_a_reject_seen_again_counts_times_and_keeps_the_latest_arrival(
    store: Store,
) -> None:
    stale = make_record(seq=1, end_ts=now_ms() - 5 * HOUR_MS)
    first = batch([stale, stale], received_at=now_ms())
    later = batch([stale], received_at=first.received_at + 500)
    await commit(store, first)
    await commit(store, later, later)
    [reject] = await store.rejects(DEVICE)
    assert (reject.reason, reject.times) == ("stale", 4)
    assert reject.received_at == later.received_at
    assert reject.sent_at == first.sent_at


async def test_rejects_filter_by_device_and_reason_newest_first(store: Store) -> None:
    now = now_ms()
    await commit_one(store, batch([make_record(seq=1, end_ts=now - 5 * HOUR_MS)]))
    await commit_one(store, batch([{"seq": 2}]))
    await commit_one(store, batch([{"seq": 1}], "scr-2"))
    assert [r.seq for r in await store.rejects()] == [1, 2, 1]
    assert [r.reason for r in await store.rejects(DEVICE)] == ["invalid", "stale"]
    assert [r.submitted_by for r in await store.rejects(reason="invalid")] == ["scr-2", DEVICE]
    assert len(await store.rejects(limit=1)) == 1


# --- sequences and gaps ---------------------------------------------------------


async def test_gaps_open_and_late_records_fill_them(store: Store) -> None:
    await commit_one(store, batch([make_record(seq=s) for s in (1, 5)]))
    [journal] = await store.journals(DEVICE)
    assert (journal.high_water, [g[:2] for g in journal.gaps]) == (5, [(2, 4)])
    await commit_one(store, batch([make_record(seq=3)]))
    [journal] = await store.journals(DEVICE)
    assert [g[:2] for g in journal.gaps] == [(2, 2), (4, 4)]
    assert await store.gap_count() == 2
    await commit_one(store, batch([make_record(seq=s) for s in (4, 2)]))
    [journal] = await store.journals(DEVICE)
    assert (journal.high_water, journal.gaps) == (5, ())
    assert await store.gap_count() == 0


async def test_gaps_carry_the_end_times_of_their_neighbours(store: Store) -> None:
    now = now_ms()
    one = make_record(seq=1, end_ts=now - 60_000)
    nine = make_record(seq=9, end_ts=now - 1_000)
    five = make_record(seq=5, end_ts=now - 30_000)
    write = batch([one, nine], received_at=now)
    await commit_one(store, write)
    [journal] = await store.journals(DEVICE)
    # Arrival times are end_ts on the service clock: end_ts - skew.
    assert journal.gaps == (Gap(2, 8, one.end_ts, nine.end_ts),)
    await commit_one(store, batch([five], received_at=now))
    [journal] = await store.journals(DEVICE)
    assert journal.gaps == (Gap(2, 4, one.end_ts, five.end_ts), Gap(6, 8, five.end_ts, nine.end_ts))


async def test_a_first_record_above_one_opens_a_gap_from_one(store: Store) -> None:
    await commit_one(store, batch([make_record(seq=4)]))
    [journal] = await store.journals(DEVICE)
    assert [g[:2] for g in journal.gaps] == [(1, 3)]


async def test_a_new_journal_for_a_known_device_is_a_reset(store: Store) -> None:
    first = batch([make_record(seq=s, journal_id="j-old") for s in (1, 2)])
    await commit_one(store, first)
    second = batch([make_record(seq=1, journal_id="j-new")], received_at=first.received_at + 10)
    await commit_one(store, second)
    journals = await store.journals(DEVICE)
    assert [(j.journal_id, j.high_water) for j in journals] == [("j-old", 2), ("j-new", 1)]
    assert journals[1].first_seen == second.received_at
    assert journals[0].last_seen == first.received_at


async def test_rule_rejected_records_still_count_as_arrived(store: Store) -> None:
    stale = make_record(seq=3, end_ts=now_ms() - 5 * HOUR_MS)
    await commit_one(store, batch([make_record(seq=1), stale]))
    [journal] = await store.journals(DEVICE)
    assert (journal.high_water, [g[:2] for g in journal.gaps]) == (3, [(2, 2)])


async def test_forbidden_and_bad_checksum_records_do_not_move_sequences(store: Store) -> None:
    forged = tampered(make_record(seq=7), campaign_id="cmp-forged")
    foreign = make_record(seq=9, device_id="scr-other")
    await commit_one(store, batch([make_record(seq=1), forged, foreign]))
    [journal] = await store.journals()
    assert (journal.device_id, journal.high_water, journal.gaps) == (DEVICE, 1, ())


async def test_journals_are_listed_per_device_or_all(store: Store) -> None:
    await commit(
        store, batch([make_record(seq=1)]), batch([make_record(seq=1, device_id="scr-2")], "scr-2")
    )
    assert [j.device_id for j in await store.journals()] == [DEVICE, "scr-2"]
    assert [j.device_id for j in await store.journals("scr-2")] == ["scr-2"]
    assert await store.journals("scr-none") == []


# --- devices --------------------------------------------------------------------


async def test_devices_are_registered_found_by_token_and_listed(store: Store) -> None:
    b = DeviceInfo("scr-b", "store-2", 1_000, None)
    a = DeviceInfo("scr-a", "store-1", 2_000, None)
    await store.add_device(b, "hash-b")
    await store.add_device(a, "hash-a")
    assert await store.list_devices() == [a, b]
    assert await store.get_device("scr-b") == b
    assert await store.get_device("scr-none") is None
    found = await store.device_for_token("hash-a")
    assert found is not None and (found.device, found.token_hash) == (a, "hash-a")
    assert await store.device_for_token("hash-none") is None


async def test_registering_a_taken_id_or_token_is_a_conflict(store: Store) -> None:
    await store.add_device(DeviceInfo("scr-a", "store-1", 1, None), "hash-a")
    with pytest.raises(Conflict, match="scr-a"):
        await store.add_device(DeviceInfo("scr-a", "store-2", 2, None), "hash-other")
    with pytest.raises(Conflict):
        await store.add_device(DeviceInfo("scr-b", "store-2", 2, None), "hash-a")
    assert [d.store_id for d in await store.list_devices()] == ["store-1"]


async def test_revoking_keeps_the_first_time_and_unknown_devices_are_not_found(
    store: Store,
) -> None:
    await store.add_device(DeviceInfo("scr-a", "store-1", 1, None), "hash-a")
    await store.revoke_device("scr-a", 50)
    await store.revoke_device("scr-a", 60)
    found = await store.device_for_token("hash-a")
    assert found is not None and found.device.revoked_at == 50
    with pytest.raises(NotFound, match="scr-none"):
        await store.revoke_device("scr-none", 70)


async def test_rotating_a_token_replaces_it_and_lifts_a_revocation(store: Store) -> None:
    await store.add_device(DeviceInfo("scr-a", "store-1", 1, None), "hash-old")
    await store.revoke_device("scr-a", 50)
    await store.rotate_device("scr-a", "hash-new")
    assert await store.device_for_token("hash-old") is None
    found = await store.device_for_token("hash-new")
    assert found is not None and found.device.revoked_at is None
    with pytest.raises(NotFound):
        await store.rotate_device("scr-none", "hash-x")


# --- status and screenshots -------------------------------------------------


def status(**fields: object) -> Status:
    defaults: dict[str, object] = {"device_id": DEVICE, "journal_id": "j-1", "sent_at": 1}
    return Status(**{**defaults, **fields})  # type: ignore[arg-type]


async def test_the_latest_status_is_kept_and_evictions_accumulate(store: Store) -> None:
    assert await store.latest_status(DEVICE) is None
    await store.save_status(status(queue_depth=7, evicted=3, evicted_ranges=[(1, 3)]), 100)
    await store.save_status(
        status(queue_depth=1, drift_ppm=2.5, evicted=2, evicted_ranges=[(10, 11), (1, 3)]), 200
    )
    await store.save_status(status(journal_id=None, evicted=1, evicted_ranges=[(4, 4)]), 300)
    info = await store.latest_status(DEVICE)
    assert info is not None
    assert (info.received_at, info.status.queue_depth, info.evicted_total) == (300, None, 6)
    assert info.evicted_ranges == (("", 4, 4), ("j-1", 1, 3), ("j-1", 10, 11))


async def test_a_resent_status_does_not_count_its_evictions_twice(store: Store) -> None:
    """A device resends a status whose answer was lost: the ranges are the truth."""
    await store.save_status(status(evicted=3, evicted_ranges=[(1, 3)]), 100)
    await store.save_status(status(evicted=3, evicted_ranges=[(1, 3)]), 101)
    info = await store.latest_status("scr-1")
    assert info is not None
    assert info.evicted_total == 3
    await store.save_status(status(version="v\x00", drift_ppm=0.125), 400)
    info = await store.latest_status(DEVICE)
    assert info is not None and (info.status.version, info.status.drift_ppm) == ("v\x00", 0.125)


async def test_a_screenshot_is_recorded_once_and_linked_to_its_records(store: Store) -> None:
    sha = hashlib.sha256(PNG).hexdigest()
    assert store.blobs.put(sha, PNG) is True
    assert await store.add_screenshot(sha, "image/png", len(PNG), DEVICE, 5) is True
    assert await store.add_screenshot(sha, "image/png", len(PNG), DEVICE, 6) is False
    assert store.blobs.read(sha) == PNG
    record = make_record(seq=1, screenshot_sha256=sha, screenshot_at_ms=7_000)
    await commit_one(store, batch([record, make_record(seq=2)]))
    linked = await query(
        store,
        "SELECT i.seq, s.size, s.received_at FROM impressions i "
        "JOIN screenshots s ON s.sha256 = i.screenshot_sha256 WHERE i.device_id = ?",
        DEVICE,
    )
    assert linked == [(1, len(PNG), 5)]


async def test_ping_answers_when_the_store_is_open(store: Store) -> None:
    await store.ping()


# --- both stores, any input -------------------------------------------------------

VARIANTS = ("ok", "altered", "partial", "forged", "foreign", "undecodable")
_examples = count()

items = st.tuples(st.sampled_from(["j-1", "j-2"]), st.integers(1, 8), st.sampled_from(VARIANTS))
# (resent five hours late?, batches committed together)
commits = st.tuples(st.booleans(), st.lists(st.lists(items, max_size=6), min_size=1, max_size=3))


def item(device: str, end: int, journal: str, seq: int, variant: str) -> Item:
    """One record of a generated scenario; variants of a key differ in checksum."""
    if variant == "undecodable":
        return {"seq": seq, "device_id": device}
    fields: dict[str, Any] = {"device_id": device, "journal_id": journal, "seq": seq, "end_ts": end}
    if variant == "altered":
        fields["campaign_id"] = "cmp-altered"
    elif variant == "partial":
        fields["end_reason"] = "skipped"
    elif variant == "foreign":
        fields["device_id"] = device + "-x"
    record = make_record(**fields)
    return tampered(record, campaign_id="cmp-forged") if variant == "forged" else record


def scenario_writes(device: str, scenario: list[Any]) -> list[list[BatchWrite]]:
    """Each generated commit as the batches the ingest pipeline would hand a store."""
    t0 = now_ms()
    groups = []
    for i, (late, batches) in enumerate(scenario):
        received = t0 + 10 * i + (5 * HOUR_MS if late else 0)
        groups.append(
            [
                batch(
                    [item(device, t0 - 1_000, *spec) for spec in specs],
                    device,
                    received_at=received,
                )
                for specs in batches
            ]
        )
    return groups


async def outcome(store: Store, device: str, groups: list[list[BatchWrite]]) -> dict[str, Any]:
    """Everything a store answers and keeps for one device's scenario."""
    acks = [await store.commit(group) for group in groups]
    rows = await query(
        store,
        "SELECT journal_id, seq, checksum, status, quality, flags, received_at FROM impressions "
        "WHERE device_id = ? ORDER BY journal_id, seq",
        device,
    )
    return {
        "acks": acks,
        "impressions": rows,
        "journals": await store.journals(device),
        "foreign_journals": await store.journals(device + "-x"),
        "rejects": [r[1:] for r in await store.rejects(device, limit=1_000)],
        "gaps": await store.gap_count(),
    }


async def both(
    urls: list[str], blobs: Path, device: str, groups: list[list[BatchWrite]]
) -> list[Any]:
    stores = [open_store(url, blobs) for url in urls]
    for opened in stores:
        await opened.open()
    try:
        return [await outcome(opened, device, groups) for opened in stores]
    finally:
        for opened in stores:
            await opened.close()


@pytest.mark.postgres
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=st.lists(commits, min_size=1, max_size=5))
def test_both_stores_answer_and_keep_any_input_alike(
    scenario: list[Any], pg_url: str, tmp_path: Path
) -> None:
    """Same batches, same acks, rows, sequence state and rejects, on SQLite and PostgreSQL."""
    device = f"scr-prop-{next(_examples)}"
    groups = scenario_writes(device, scenario)
    urls = [f"sqlite:///{tmp_path / 'parity.db'}", pg_url]
    on_sqlite, on_postgres = asyncio.run(both(urls, tmp_path / "blobs", device, groups))
    assert on_postgres == on_sqlite


# --- operators ----------------------------------------------------------------------


async def test_operators_are_registered_found_by_token_listed_and_revoked(store: Store) -> None:
    bob = OperatorInfo("bob", 2_000, None)
    alice = OperatorInfo("alice", 1_000, None)
    await store.add_operator(bob, "op-hash-b")
    await store.add_operator(alice, "op-hash-a")
    assert await store.list_operators() == [alice, bob]
    found = await store.operator_for_token("op-hash-a")
    assert found is not None and (found.operator, found.token_hash) == (alice, "op-hash-a")
    assert await store.operator_for_token("op-hash-none") is None
    await store.revoke_operator("alice", 50)
    await store.revoke_operator("alice", 60)
    found = await store.operator_for_token("op-hash-a")
    assert found is not None and found.operator.revoked_at == 50
    with pytest.raises(NotFound, match="nobody"):
        await store.revoke_operator("nobody", 70)


async def test_an_operator_name_or_token_taken_is_a_conflict(store: Store) -> None:
    await store.add_operator(OperatorInfo("alice", 1, None), "op-hash-a")
    with pytest.raises(Conflict, match="alice"):
        await store.add_operator(OperatorInfo("alice", 2, None), "op-hash-other")
    with pytest.raises(Conflict):
        await store.add_operator(OperatorInfo("bob", 2, None), "op-hash-a")
    assert [o.name for o in await store.list_operators()] == ["alice"]


async def test_operators_and_devices_are_separate_token_spaces(store: Store) -> None:
    await store.add_device(DeviceInfo("scr-a", "store-1", 1, None), "same-hash")
    await store.add_operator(OperatorInfo("alice", 1, None), "other-hash")
    assert await store.operator_for_token("same-hash") is None
    assert await store.device_for_token("other-hash") is None


# --- reconciliation: what the service holds of some devices ---------------------


async def test_held_records_are_every_impression_and_reject_of_the_devices_asked(
    store: Store,
) -> None:
    mine = [make_record(seq=1), make_record(seq=2, end_reason="skipped", duration_ms=1_000)]
    stale = make_record(seq=3, end_ts=now_ms() - 5 * HOUR_MS)
    other = make_record(device_id="scr-2", seq=1)
    await commit(store, batch([*mine, stale]), batch([other], device_id="scr-2"))
    held = await store.held_records([DEVICE])
    assert sorted(tuple(r) for r in held.impressions) == [
        (DEVICE, "j-1", 1, mine[0].checksum, "valid", mine[0].start_ts, "cnt-1"),
        (DEVICE, "j-1", 2, mine[1].checksum, "partial", mine[1].start_ts, "cnt-1"),
    ]
    assert [tuple(r) for r in held.rejects] == [(DEVICE, "j-1", 3, stale.checksum, "stale")]
    both = await store.held_records([DEVICE, "scr-2"])
    assert len(both.impressions) == 3
    nobody = await store.held_records(["scr-none"])
    assert (nobody.impressions, nobody.rejects) == ([], [])
