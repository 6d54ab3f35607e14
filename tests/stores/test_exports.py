"""The export ledger on both stores: incremental exports, re-exports by id, windows, overlaps.

Plays go in through the stores' commit path and are decided by the real
verifier on a fixed clock; exports are made the way the routes make them
(`server/exports.open_export`), so every byte here is one a buyer would get.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playproof.catalog import Catalog, Change, check_references, parse_catalog
from playproof.catalog_merge import merge
from playproof.exports import DV360, PLAYOUT
from playproof.server import exports
from playproof.server.verifier import Verifier
from playproof.stores import export_ledger as ledger
from playproof.stores import open_store
from playproof.stores.base import DeviceInfo, Store
from playproof.stores.export_ledger import ExportInfo
from tests.stores.conftest import query
from tests.stores.pipeline import batch
from tests.support import make_record

NOON = int(datetime(2026, 12, 2, 12, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000
DAY = 86_400_000
SELLER = "8675309"
Key = tuple[str, str, int]


def catalog_doc() -> dict[str, Any]:
    """Three screens in London: scr-1 and scr-2 share a DV360 ad unit; scr-z shows two spots."""

    def device(device_id: str, frame: str, ad_unit: str, zones: int = 1) -> dict[str, Any]:
        ids = {"frame_id": frame, "ad_unit": ad_unit, "player_ref": f"player-{device_id}"}
        return {"device_id": device_id, "zones": zones, "external_ids": ids}

    return {
        "suppliers": [
            {"supplier_id": "sup-1", "currency": "GBP", "external_ids": {"spacebrandid": "4021"}}
        ],
        "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
        "devices": [
            device("scr-1", "1000000001", "au-1"),
            device("scr-2", "1000000002", "au-1"),
            device("scr-z", "1000000003", "au-3", zones=2),
        ],
        "contents": [
            {
                "content_id": "cnt-1",
                "expected_ms": 15000,
                "name": "Cocoa, hot",
                "external_ids": {"creative": "cr-9"},
            }
        ],
        "campaigns": [
            {
                "campaign_id": "cmp-1",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-11-01", "to": "2027-01-01"},
                "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
                "price": {"model": "cpm", "amount": "12.5", "currency": "GBP"},
                "impressions_per_play": {"multiplier": "1.5"},
                "external_ids": {"order": "ord-1", "line": "line-3", "spacebuyerid": "1001"},
            }
        ],
    }


async def import_catalog(store: Store, doc: dict[str, Any], at: int = NOON) -> list[Change]:
    incoming = parse_catalog(json.dumps(doc).encode())

    def update(current: Catalog) -> tuple[Catalog, list[Change]]:
        merged, changes = merge(current, incoming, False)
        check_references(merged)
        return merged, changes

    return await store.update_catalog(update, at)


def play(device_id: str, seq: int, start: int, length: int = 15_000) -> Any:
    return make_record(
        device_id=device_id,
        seq=seq,
        start_ts=start,
        end_ts=start + length,
        duration_ms=length,
    )


async def ingest(store: Store, records: list[Any], at: int) -> None:
    """Commit plays received at `at` and let the verifier decide them."""
    by_device: dict[str, list[Any]] = {}
    for record in records:
        by_device.setdefault(record.device_id, []).append(record)
    for device_id, items in by_device.items():
        (acks,) = await store.commit([batch(items, device_id, received_at=at)])
        assert {a.result for a in acks} == {"accepted"}, acks
    await Verifier(store, clock=lambda: at + MINUTE).drain()


@pytest.fixture
async def booked(store: Store) -> Store:
    for device_id in ("scr-1", "scr-2", "scr-z"):
        await store.add_device(DeviceInfo(device_id, "store-1", NOON, None), f"hash-{device_id}")
    await import_catalog(store, catalog_doc())
    return store


async def export(
    store: Store, buyer: str, at: int, wanted: dict[str, str] | None = None
) -> tuple[ExportInfo, bytes]:
    """An export made at `at` (since=last unless told), and its whole file."""
    info, body = await exports.open_export(store, buyer, wanted or {"since": "last"}, at, SELLER)
    return info, b"".join([piece async for piece in body])


async def contained(store: Store, export_id: int) -> list[Key]:
    rows = await query(
        store,
        "SELECT device_id, journal_id, seq FROM export_plays WHERE export_id = ? "
        "AND reason IS NULL ORDER BY start_ts, device_id, journal_id, seq",
        export_id,
    )
    return [(str(d), str(j), int(s)) for d, j, s in rows]


async def listed_apart(store: Store, export_id: int) -> dict[int, str]:
    """Sequence -> reasons of the plays an export listed apart (through the shown listing)."""
    body = exports.skipped_body(store, export_id, "json")
    document = json.loads(b"".join([piece async for piece in body]))
    return {item["seq"]: ",".join(item["reasons"]) for item in document["skipped"]}


async def verified(store: Store) -> set[Key]:
    rows = await query(
        store,
        "SELECT device_id, journal_id, seq FROM impressions WHERE verification = 'verified'",
    )
    return {(str(d), str(j), int(s)) for d, j, s in rows}


def playout_rows(body: bytes) -> list[list[str]]:
    assert body == b"" or body.endswith(b"\n")
    return list(csv.reader(io.StringIO(body.decode())))


def dv360_requests(body: bytes) -> list[list[dict[str, Any]]]:
    return [json.loads(line)["requests"] for line in body.splitlines()]


@pytest.mark.parametrize("buyer", [DV360, PLAYOUT])
async def test_two_incremental_exports_in_a_row_neither_repeat_nor_skip_a_play(
    booked: Store, buyer: str
) -> None:
    store = booked
    await ingest(
        store, [play("scr-1", s, NOON + s * 20_000) for s in range(1, 6)], NOON + 3 * MINUTE
    )
    first, first_body = await export(store, buyer, NOON + 10 * MINUTE)
    # More plays arrive, one of them late: it started before everything already exported.
    late = [play("scr-2", 1, NOON - 30 * MINUTE)]
    more = [play("scr-1", s, NOON + s * 20_000) for s in range(6, 9)] + late
    await ingest(store, more, NOON + 20 * MINUTE)
    second, second_body = await export(store, buyer, NOON + 30 * MINUTE)
    third, third_body = await export(store, buyer, NOON + 40 * MINUTE)

    a, b = await contained(store, first.export_id), await contained(store, second.export_id)
    assert (first.plays, second.plays, third.plays) == (5, 4, 0)
    assert not set(a) & set(b), "no play twice"
    assert set(a) | set(b) == await verified(store), "no play skipped"
    assert ("scr-2", "j-1", 1) in b
    assert third_body == b""
    if buyer == PLAYOUT:
        assert [len(playout_rows(x)) for x in (first_body, second_body)] == [5, 4]
    else:
        assert [len(r) for body in (first_body, second_body) for r in dv360_requests(body)] == [
            5,
            4,
        ]


@pytest.mark.parametrize("buyer", [DV360, PLAYOUT])
async def test_a_past_export_is_produced_again_byte_for_byte_by_its_id(
    booked: Store, buyer: str
) -> None:
    store = booked
    await ingest(
        store, [play("scr-1", s, NOON + s * 20_000) for s in range(1, 4)], NOON + 3 * MINUTE
    )
    info, body = await export(store, buyer, NOON + 10 * MINUTE)
    # Later exports and a catalog correction change nothing of what was sent.
    doc = catalog_doc()
    doc["contents"][0]["name"] = "Cocoa, renamed"
    doc["contents"][0]["external_ids"]["creative"] = "cr-10"
    await import_catalog(store, doc, NOON + 11 * MINUTE)
    await ingest(store, [play("scr-1", 9, NOON + 5 * MINUTE)], NOON + 12 * MINUTE)
    await export(store, buyer, NOON + 20 * MINUTE)
    again, again_body = await export(
        store, buyer, NOON + 30 * MINUTE, {"export_id": str(info.export_id)}
    )
    assert again == info
    assert again_body == body and len(body) > 0
    assert exports.headers(again) == exports.headers(info)


async def test_dv360_request_bodies_hold_1000_ad_plays_each(booked: Store) -> None:
    store = booked
    records = [
        # scr-2 shares scr-1's ad unit: a millisecond apart, they are distinct DV360 plays.
        play(d, s, NOON - 3 * 3_600_000 + s * 16_000 + (d == "scr-2"))
        for d in ("scr-1", "scr-2")
        for s in range(1, 601)
    ]
    await ingest(store, records, NOON)
    info, body = await export(store, DV360, NOON + MINUTE)
    requests = dv360_requests(body)
    assert info.plays == 1200
    assert [len(r) for r in requests] == [1000, 200]
    assert {item["parent"] for r in requests for item in r} == {f"sellers/{SELLER}"}
    first = requests[0][0]["adPlay"]
    assert first["startTime"].endswith("Z") and first["impressionCount"] == 1.5


async def test_a_play_older_than_the_window_is_listed_apart_once_and_for_good(
    booked: Store,
) -> None:
    store = booked
    await ingest(store, [play("scr-1", 1, NOON)], NOON + 5 * MINUTE)
    await ingest(store, [play("scr-1", 2, NOON + 2 * DAY)], NOON + 2 * DAY + 5 * MINUTE)
    info, _ = await export(store, DV360, NOON + 3 * DAY + MINUTE)
    assert (info.plays, info.skipped) == (1, 1)
    assert await listed_apart(store, info.export_id) == {1: "outside_window"}
    assert await ledger.reason_counts(store, info.export_id) == {"outside_window": 1}
    again, _ = await export(store, DV360, NOON + 3 * DAY + 2 * MINUTE)
    assert (again.plays, again.skipped) == (0, 0), "a final refusal is not listed again"
    # Playout, with its 14 days, takes both.
    playout, _ = await export(store, PLAYOUT, NOON + 3 * DAY + 3 * MINUTE)
    assert (playout.plays, playout.skipped) == (2, 0)


async def test_a_play_missing_a_mandatory_id_is_listed_apart_until_the_catalog_names_it(
    booked: Store,
) -> None:
    store = booked
    doc = catalog_doc()
    del doc["devices"][1]["external_ids"]["frame_id"]
    await import_catalog(store, {**doc, "devices": [doc["devices"][1]]}, NOON)
    await store.update_catalog(lambda c: _without_frame(c, "scr-2"), NOON)
    await ingest(
        store, [play("scr-1", 1, NOON), play("scr-2", 2, NOON + MINUTE)], NOON + 5 * MINUTE
    )
    first, body = await export(store, PLAYOUT, NOON + 10 * MINUTE)
    assert (first.plays, first.skipped) == (1, 1)
    assert await listed_apart(store, first.export_id) == {2: "missing_external_id:frame_id"}
    assert all(row[0] for row in playout_rows(body)), "never an empty frameid"
    second, _ = await export(store, PLAYOUT, NOON + 11 * MINUTE)
    assert (second.plays, second.skipped) == (0, 1), "tried again, listed apart again"
    await import_catalog(store, catalog_doc(), NOON + 12 * MINUTE)  # the frame id is back
    await Verifier(store, clock=lambda: NOON + 13 * MINUTE).drain()
    third, third_body = await export(store, PLAYOUT, NOON + 14 * MINUTE)
    assert (third.plays, third.skipped) == (1, 0)
    assert playout_rows(third_body)[0][0] == "1000000002"


def _without_frame(current: Catalog, device_id: str) -> tuple[Catalog, list[Change]]:
    doc = json.loads(json.dumps(_builtins(current)))
    for device in doc["devices"]:
        if device["device_id"] == device_id:
            device["external_ids"].pop("frame_id", None)
    incoming = parse_catalog(json.dumps(doc).encode())
    return merge(current, incoming, True)


def _builtins(catalog: Catalog) -> Any:
    import msgspec

    return msgspec.to_builtins(catalog)


@pytest.mark.parametrize("buyer", [DV360, PLAYOUT])
async def test_a_play_not_over_at_one_export_is_taken_by_the_next(
    booked: Store, buyer: str
) -> None:
    store = booked
    await ingest(
        store, [play("scr-1", 1, NOON), play("scr-1", 2, NOON + MINUTE)], NOON + 5 * MINUTE
    )
    # An export whose clock says play 2 is still on (a CLI on a machine a minute behind).
    early, _ = await export(store, buyer, NOON + MINUTE + 10_000)
    assert (early.plays, early.skipped) == (1, 1)
    assert await listed_apart(store, early.export_id) == {2: "future"}
    later, _ = await export(store, buyer, NOON + 6 * MINUTE)
    assert await contained(store, later.export_id) == [("scr-1", "j-1", 2)]


async def test_a_play_failed_then_verified_after_a_catalog_correction_is_exported_once(
    booked: Store,
) -> None:
    store = booked
    stray = make_record(device_id="scr-1", seq=2, start_ts=NOON + MINUTE,
                        end_ts=NOON + MINUTE + 15_000, campaign_id="cmp-2")  # fmt: skip
    await ingest(store, [play("scr-1", 1, NOON), stray], NOON + 5 * MINUTE)
    first, _ = await export(store, PLAYOUT, NOON + 10 * MINUTE)
    assert (first.plays, first.skipped) == (1, 0), "a failed play is no candidate"
    doc = catalog_doc()
    doc["campaigns"].append({**doc["campaigns"][0], "campaign_id": "cmp-2"})
    await import_catalog(store, doc, NOON + 11 * MINUTE)  # re-decides scr-1's plays from 1 on
    await Verifier(store, clock=lambda: NOON + 12 * MINUTE).drain()
    assert {k[2] for k in await verified(store)} == {1, 2}
    second, _ = await export(store, PLAYOUT, NOON + 13 * MINUTE)
    assert await contained(store, second.export_id) == [("scr-1", "j-1", 2)], "play 1 not again"


async def test_a_range_export_between_incremental_ones_leaves_nothing_out(booked: Store) -> None:
    store = booked
    await ingest(store, [play("scr-1", 1, NOON)], NOON + 5 * MINUTE)
    await export(store, DV360, NOON + 6 * MINUTE)
    await ingest(store, [play("scr-1", 2, NOON + MINUTE), play("scr-1", 3, NOON + 2 * MINUTE)],
                 NOON + 7 * MINUTE)  # fmt: skip
    span = {"from": "2026-12-02T12:01:00Z", "to": "2026-12-02T12:02:00Z"}
    ranged, _ = await export(store, DV360, NOON + 8 * MINUTE, span)
    after, _ = await export(store, DV360, NOON + 9 * MINUTE)
    assert await contained(store, ranged.export_id) == [("scr-1", "j-1", 2)]
    assert await contained(store, after.export_id) == [("scr-1", "j-1", 3)]


async def test_playout_never_files_a_play_overlapping_one_on_its_frame_by_more_than_1_5_s(
    booked: Store,
) -> None:
    store = booked
    # scr-z shows two spots at once: both overlapping plays are verified.
    await ingest(store, [play("scr-z", 1, NOON)], NOON + 5 * MINUTE)
    first, _ = await export(store, PLAYOUT, NOON + 10 * MINUTE)
    overlapping = [
        play("scr-z", 2, NOON + 13_000),  # 2 s into play 1, filed before: refused
        play("scr-z", 3, NOON + 60_000),  # taken
        play("scr-z", 4, NOON + 65_000),  # 10 s into play 3, in this export: refused
        play("scr-z", 5, NOON + 77_000),  # 3 s into play 4, which is not filed: taken
    ]
    await ingest(store, overlapping, NOON + 15 * MINUTE)
    assert {k[2] for k in await verified(store)} == {1, 2, 3, 4, 5}
    second, body = await export(store, PLAYOUT, NOON + 20 * MINUTE)
    assert first.plays == 1
    assert (second.plays, second.skipped) == (2, 2)
    assert await listed_apart(store, second.export_id) == {2: "overlap", 4: "overlap"}
    assert [row[1] for row in playout_rows(body)] == [
        "2026-12-02T12:01:00.000",
        "2026-12-02T12:01:17.000",
    ]
    later, _ = await export(store, PLAYOUT, NOON + 30 * MINUTE)
    assert (later.plays, later.skipped) == (0, 0), "an overlap is final"
    # DV360 has no such rule: it takes all five.
    dv360, _ = await export(store, DV360, NOON + 31 * MINUTE)
    assert dv360.plays == 5


async def test_dv360_never_sends_two_plays_with_one_ad_unit_line_creative_and_start(
    booked: Store,
) -> None:
    store = booked
    await ingest(store, [play("scr-1", 1, NOON)], NOON + 5 * MINUTE)
    first, _ = await export(store, DV360, NOON + 10 * MINUTE)
    # scr-2 shares scr-1's ad unit and starts the same creative at the same millisecond.
    await ingest(store, [play("scr-2", 1, NOON)], NOON + 15 * MINUTE)
    second, _ = await export(store, DV360, NOON + 20 * MINUTE)
    assert (first.plays, second.plays, second.skipped) == (1, 0, 1)
    assert await listed_apart(store, second.export_id) == {1: "duplicate"}


async def test_exports_for_one_buyer_never_take_the_same_play_even_at_once(
    booked: Store, any_url: str
) -> None:
    store = booked
    records = [play(d, s, NOON + s * 16_000) for d in ("scr-1", "scr-2") for s in range(1, 151)]
    await ingest(store, records, NOON + 60 * MINUTE)
    other = open_store(any_url)  # a second service node on the same database
    await other.open()
    try:
        made = await asyncio.gather(
            *(
                exports.open_export(s, PLAYOUT, {"since": "last"}, NOON + 70 * MINUTE)
                for s in (store, other, store, other)
            )
        )
    finally:
        await other.close()
    taken = [await contained(store, info.export_id) for info, _ in made]
    everything = [key for keys in taken for key in keys]
    assert len(everything) == len(set(everything)) == 300
    assert sorted(info.plays for info, _ in made)[-1] == 300, "one took all, the others none"


async def test_an_export_id_of_another_buyer_or_none_at_all_is_not_found(booked: Store) -> None:
    from playproof.errors import NotFound, ProtocolError

    info, _ = await export(booked, PLAYOUT, NOON)
    with pytest.raises(NotFound, match="playout export"):
        await export(booked, DV360, NOON, {"export_id": str(info.export_id)})
    with pytest.raises(NotFound, match="no export 999"):
        await export(booked, DV360, NOON, {"export_id": "999"})
    with pytest.raises(ProtocolError, match="since=last"):
        await export(booked, DV360, NOON, {"since": "last", "from": "2026-12-01"})
    with pytest.raises(ProtocolError, match="seller_id"):
        await exports.open_export(booked, DV360, {"since": "last"}, NOON, "")


# --- any interleaving (SQLite; the ledger's SQL is shared by both stores) -----------------

ARRIVALS = st.lists(
    st.tuples(st.sampled_from(["scr-1", "scr-2", "scr-z"]), st.integers(0, 400)),
    min_size=1,
    max_size=8,
)
RANGES = st.tuples(st.sampled_from([DV360, PLAYOUT]), st.integers(0, 400), st.integers(1, 400))
STEPS = st.lists(
    st.one_of(ARRIVALS, st.sampled_from([DV360, PLAYOUT, "toggle"]), RANGES),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(steps=STEPS)
def test_any_interleaving_of_arrivals_and_exports_settles_each_verified_play_once(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Any]
) -> None:
    """Plays on a 5 s grid (overlapping on a screen, sharing starts across screens) arrive
    between incremental and range exports, while scr-2's frame id comes and goes (its plays
    re-decided each time); once the catalog is whole again and each buyer has had a last
    incremental export, every verified play is settled exactly once per buyer: contained in
    one export, or listed apart for good."""
    folder = tmp_path_factory.mktemp("interleaving")
    asyncio.run(_interleave(f"sqlite:///{folder / 'p.db'}", steps))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def _interleave(url: str, steps: list[Any]) -> None:
    store = open_store(url)
    await store.open()
    try:
        for device_id in ("scr-1", "scr-2", "scr-z"):
            await store.add_device(DeviceInfo(device_id, "store-1", NOON, None), f"h-{device_id}")
        await import_catalog(store, catalog_doc())
        seqs: dict[str, int] = {}
        at, whole = NOON + 60 * MINUTE, True
        for step in [*steps, "whole", DV360, PLAYOUT]:
            at += MINUTE
            if step in (DV360, PLAYOUT):
                await export(store, step, at)
            elif step in ("toggle", "whole"):
                whole = step == "whole" or not whole
                await _frame_of_scr2(store, whole, at)
            elif isinstance(step, tuple):
                buyer, lo, length = step
                span = {"from": _iso(NOON + lo * 5_000), "to": _iso(NOON + (lo + length) * 5_000)}
                await export(store, buyer, at, span)
            else:
                records = []
                for device_id, slot in step:
                    seqs[device_id] = seqs.get(device_id, 0) + 1
                    records.append(play(device_id, seqs[device_id], NOON + slot * 5_000))
                await ingest(store, records, at)
        for buyer in (DV360, PLAYOUT):
            await _check_settled_once(store, buyer)
    finally:
        await store.close()


async def _frame_of_scr2(store: Store, present: bool, at: int) -> None:
    """Take scr-2's frame id out of the catalog or put it back; the verifier decides again."""
    doc = catalog_doc()
    if not present:
        del doc["devices"][1]["external_ids"]["frame_id"]
    incoming = parse_catalog(json.dumps(doc).encode())
    await store.update_catalog(lambda current: merge(current, incoming, True), at)
    await Verifier(store, clock=lambda: at + MINUTE).drain()


async def _check_settled_once(store: Store, buyer: str) -> None:
    rows = await query(
        store,
        "SELECT device_id, journal_id, seq, start_ts, end_ts, slot, reason, settled "
        "FROM export_plays WHERE buyer = ?",
        buyer,
    )
    settled = [(d, j, s) for d, j, s, *_, flag in rows if flag]
    assert len(settled) == len(set(settled)), "a play settled twice"
    assert set(settled) == await verified(store)
    assert all(flag == 1 for *_, reason, flag in rows if reason is None)
    sent = [(slot, start, end) for _, _, _, start, end, slot, reason, _ in rows if reason is None]
    if buyer == DV360:
        assert len({slot for slot, _, _ in sent}) == len(sent), "two plays on one DV360 slot"
        return
    for i, (frame, start, end) in enumerate(sent):
        for other, o_start, o_end in sent[i + 1 :]:
            overlap = min(end, o_end) - max(start, o_start)
            assert other != frame or overlap <= 1500, "two filed plays overlap on a frame"
