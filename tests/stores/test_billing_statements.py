"""Billing statements on both stores: final once settled, kept byte for byte, adjusted once.

The plays are committed with the real rules and decided by the real verifier
against a catalog priced per play in EUR and per thousand impressions in JPY;
the statement is asked for at explicit instants of the service's clock, so that
every step of finality is seen, and catalog corrections after a statement is
final arrive as adjustments on the next one, each billed once.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playproof import billing
from playproof.errors import Conflict
from playproof.rules import DEFAULT_POLICY, HOUR_MS
from playproof.server import reports, statements, verification_report
from playproof.server.formats import rfc3339
from playproof.server.verifier import Verifier
from playproof.stores import open_store
from playproof.stores import statements as kept
from playproof.stores.base import DeviceInfo, Store
from playproof.stores.statements import Billed, FinalStatement, Rebase, StatementKey
from tests.stores import test_verification_report as vrt
from tests.stores.pipeline import batch
from tests.stores.test_reports import ZONES
from tests.stores.test_verification import import_catalog
from tests.support import make_record

DAY_MS = 24 * HOUR_MS
D1 = int(datetime(2026, 5, 4, tzinfo=UTC).timestamp() * 1000)  # a Monday; London is +01:00
P1, P2, P3 = ((D1 + i * DAY_MS, D1 + (i + 1) * DAY_MS) for i in range(3))
VERIFY_AT = D1 + 10 * DAY_MS  # the verifier's clock: every play received has settled
DEVICES = {"scr-b1": "store-1", "scr-b2": "store-2"}
LINE = {
    "scr-b1": {"campaign_id": "cmp-pp", "ad_group_id": "ag-e", "content_id": "cnt-e"},
    "scr-b2": {"campaign_id": "cmp-cpm", "ad_group_id": "ag-j", "content_id": "cnt-j"},
}
SUPPLIER = {"scr-b1": "sup-e", "scr-b2": "sup-j"}


def catalog(pp_from: str | None = None, cpm_price: str = "1500", cpm: bool = True) -> Any:
    """sup-e pays 0.0125 EUR a play of cmp-pp; sup-j 1500 JPY per 1000 impressions of cmp-cpm,
    2.5 impressions a play. `pp_from` adds a daypart to cmp-pp (a correction)."""
    flight: dict[str, Any] = {"from": "2026-05-01", "to": "2026-06-01"}
    pp_flight = flight
    if pp_from is not None:
        pp_flight = {**flight, "dayparts": [{"days": "mon-sun", "from": pp_from, "to": "23:59"}]}
    campaigns = [
        {
            "campaign_id": "cmp-pp",
            "supplier_id": "sup-e",
            "flight": pp_flight,
            "ad_groups": [{"ad_group_id": "ag-e", "contents": ["cnt-e"]}],
            "price": {"model": "per_play", "amount": "0.0125", "currency": "EUR"},
        }
    ]
    if cpm:
        campaigns.append(
            {
                "campaign_id": "cmp-cpm",
                "supplier_id": "sup-j",
                "flight": flight,
                "ad_groups": [{"ad_group_id": "ag-j", "contents": ["cnt-j"]}],
                "price": {"model": "cpm", "amount": cpm_price, "currency": "JPY"},
                "impressions_per_play": {"multiplier": "2.5", "sourcetype": 1, "vendor": "aud"},
            }
        )
    return {
        "suppliers": [
            {"supplier_id": "sup-e", "name": "Euro Brands", "currency": "EUR"},
            {"supplier_id": "sup-j", "name": "Nippon Ads", "currency": "JPY"},
        ],
        "stores": [
            {"store_id": "store-1", "time_zone": "Europe/London"},
            {"store_id": "store-2", "time_zone": "Asia/Tokyo"},
        ],
        "devices": [{"device_id": d, "zones": 1} for d in DEVICES],
        "contents": [{"content_id": c, "expected_ms": 15000} for c in ("cnt-e", "cnt-j")],
        "campaigns": campaigns,
    }


def play(device: str, seq: int, start: int, **fields: Any) -> Any:
    """A completed 15 s play of the device's line, or as `fields` say."""
    base = {**LINE[device], "supplier_id": SUPPLIER[device], "store_id": DEVICES[device]}
    length = fields.pop("duration_ms", 15_000)
    return make_record(
        device_id=device,
        seq=seq,
        start_ts=start,
        end_ts=start + length,
        duration_ms=length,
        **{**base, **fields},
    )


def plays() -> dict[str, list[Any]]:
    """Per screen: P1's plays (10:00 to 10:11 London, 12:00 Tokyo), then P2's (11:00 London)."""
    b1 = [play("scr-b1", i + 1, P1[0] + 9 * HOUR_MS + i * 60_000) for i in range(10)]
    b1.append(play("scr-b1", 11, P1[0] + 9 * HOUR_MS + 600_000, campaign_id="cmp-zz"))
    b1.append(
        play("scr-b1", 12, P1[0] + 9 * HOUR_MS + 660_000, duration_ms=3_000, end_reason="skipped")
    )
    b1 += [play("scr-b1", 13 + i, P2[0] + 10 * HOUR_MS + i * 60_000) for i in range(4)]
    b2 = [play("scr-b2", i + 1, P1[0] + 3 * HOUR_MS + i * 60_000) for i in range(8)]
    b2 += [play("scr-b2", 9 + i, P2[0] + 3 * HOUR_MS + i * 60_000) for i in range(3)]
    return {"scr-b1": b1, "scr-b2": b2}


async def commit(store: Store, device: str, records: list[Any]) -> None:
    """Each play received a second after it ended, judged by the real rules."""
    for record in records:
        received = record.end_ts + 1_000
        write = batch([record], device, received_at=received, store_id=DEVICES[device])
        acks = await store.commit([write])
        assert acks[0][0].result == "accepted", acks


async def drain(store: Store) -> None:
    await Verifier(store, clock=lambda: VERIFY_AT).drain()


async def book_and_play(store: Store) -> None:
    for device, store_id in DEVICES.items():
        await store.add_device(DeviceInfo(device, store_id, D1, None), f"hash-{device}")
    await import_catalog(store, catalog())
    for device, records in plays().items():
        await commit(store, device, records)
    await drain(store)


def settles(period: tuple[int, int]) -> int:
    """When a period settles with the default policy: its end plus 29.5 hours."""
    return billing.settled_at(period[1], *statements.waits(DEFAULT_POLICY))


async def asked(store: Store, period: tuple[int, int], now: int, **filters: str) -> bytes:
    query = {"from": rfc3339(period[0]) or "", "to": rfc3339(period[1]) or "", **filters}
    return await statements.billing_statement(store, query, now, DEFAULT_POLICY)


def lines(document: bytes) -> dict[tuple[str, str, str], dict[str, Any]]:
    found = json.loads(document)["lines"]
    return {(x["supplier_id"], x["campaign_id"], x["ad_group_id"]): x for x in found}


def adjustments(document: bytes) -> list[tuple[Any, ...]]:
    """(period from, campaign, billable, amount, currency, plays' seqs) of each adjustment."""
    return [
        (
            a["period_from"],
            a["campaign_id"],
            a["billable_plays"],
            a["amount"],
            a["currency"],
            [p["seq"] for p in a["plays"]],
        )
        for a in json.loads(document)["adjustments"]
    ]


def key(period: tuple[int, int]) -> StatementKey:
    return StatementKey(period[0], period[1], "UTC")


async def stored(store: Store, period: tuple[int, int]) -> str | None:
    async with store.statement_snapshot() as reader:
        return await kept.stored_document(reader, key(period))


async def test_a_statement_turns_final_only_once_everything_has_settled(store: Store) -> None:
    """Open period, pending play, waits not over, verifier behind: provisional; then final."""
    await book_and_play(store)
    open_doc = json.loads(await asked(store, P1, P1[1] - 1))
    assert open_doc["status"] == "provisional" and open_doc["finalized_at"] is None
    assert open_doc["settles_at"] == rfc3339(P1[1] + 29 * HOUR_MS + 30 * 60_000)
    # A late play of the period, received after it ended: pending, and the verifier behind.
    late = play("scr-b1", 17, P1[0] + 20 * HOUR_MS)
    await commit(store, "scr-b1", [late])
    waiting = json.loads(await asked(store, P1, settles(P1) + 1))
    assert waiting["status"] == "provisional"
    assert sum(x["pending"] for x in waiting["lines"]) == 1
    await drain(store)
    assert json.loads(await asked(store, P1, settles(P1) - 1))["status"] == "provisional"
    assert await stored(store, P1) is None, "a provisional statement is never kept"
    final = await asked(store, P1, settles(P1))
    doc = json.loads(final)
    assert doc["status"] == "final" and doc["finalized_at"] == rfc3339(settles(P1))
    assert await stored(store, P1) == final.decode()
    got = lines(final)
    assert got[("sup-e", "cmp-pp", "ag-e")] | {"failed_by_reason": None} == {
        "supplier_id": "sup-e",
        "campaign_id": "cmp-pp",
        "ad_group_id": "ag-e",
        "plays": 12,
        "valid": 11,
        "partial": 1,
        "verified": 11,
        "failed": 0,
        "failed_by_reason": None,
        "pending": 0,
        "billable_plays": 11,
        "impressions": "11",
        "sourcetype": 0,
        "vendor": None,
        "price_model": "per_play",
        "price_amount": "0.0125",
        "amount": "0.14",  # 0.1375 rounded half-even to cents
        "currency": "EUR",
    }
    unbooked = got[("sup-e", "cmp-zz", "ag-e")]
    assert (unbooked["failed_by_reason"], unbooked["amount"], unbooked["price_model"]) == (
        {"unknown_campaign": 1},
        "0.00",
        None,
    )
    cpm = got[("sup-j", "cmp-cpm", "ag-j")]
    assert (cpm["billable_plays"], cpm["impressions"], cpm["amount"], cpm["vendor"]) == (
        8,
        "20",
        "30",
        "aud",
    )
    totals = {t["currency"]: t["amount_due"] for t in doc["totals"]["by_currency"]}
    assert totals == {"EUR": "0.14", "JPY": "30"}, "currencies are never added"


async def test_corrections_after_a_final_statement_are_billed_once_on_the_next_ones(
    store: Store,
) -> None:
    """A final statement never changes; a correction is an adjustment on the next final one."""
    await book_and_play(store)
    await commit(store, "scr-b1", [play("scr-b1", 17, P1[0] + 20 * HOUR_MS)])
    await drain(store)
    first = await asked(store, P1, settles(P1))
    assert json.loads(first)["status"] == "final"

    # Correction 1: cmp-pp only from 10:05 London (plays 1 to 5 fail), cmp-cpm at 1800 JPY.
    await import_catalog(store, catalog(pp_from="10:05", cpm_price="1800"))
    assert await asked(store, P1, VERIFY_AT) == first, "kept, byte for byte"
    early = await asked(store, P2, settles(P2) + HOUR_MS)
    assert json.loads(early)["status"] == "provisional", "plays are being decided again"
    assert adjustments(early) == [], "a period being decided again waits for its decisions"
    await drain(store)
    second = await asked(store, P2, settles(P2))
    assert json.loads(second)["status"] == "final"
    p1_from = rfc3339(P1[0])
    assert adjustments(second) == [
        (p1_from, "cmp-pp", -5, "-0.06", "EUR", [1, 2, 3, 4, 5]),  # 0.08 instead of 0.14
        (p1_from, "cmp-cpm", 0, "6", "JPY", []),  # 20 impressions at 1.8 instead of 1.5 a mille
    ]
    own = lines(second)
    assert own[("sup-e", "cmp-pp", "ag-e")]["amount"] == "0.05"
    assert own[("sup-j", "cmp-cpm", "ag-j")]["amount"] == "14"  # 7.5 × 1.8 = 13.5: to even
    due = {t["supplier_id"]: t["amount_due"] for t in json.loads(second)["totals"]["by_supplier"]}
    assert due == {"sup-e": "-0.01", "sup-j": "20"}

    # Correction 2: cmp-cpm back to 1500. P1's cmp-pp correction is not billed again.
    await import_catalog(store, catalog(pp_from="10:05", cpm_price="1500"))
    await drain(store)
    third = await asked(store, P3, settles(P3))
    assert json.loads(third)["status"] == "final"
    assert adjustments(third) == [
        (p1_from, "cmp-cpm", 0, "-6", "JPY", []),
        (rfc3339(P2[0]), "cmp-cpm", 0, "-3", "JPY", []),  # 11 instead of 14
    ]
    assert [await asked(store, p, VERIFY_AT) for p in (P1, P2, P3)] == [first, second, third]
    await assert_billed_is_recounted(store, first, [second, third])


async def assert_billed_is_recounted(store: Store, final: bytes, later: list[bytes]) -> None:
    """P1's final amounts plus every adjustment billed for it are P1 counted now."""
    async with store.statement_snapshot() as reader:
        priced = statements.pricing(await kept.catalog(reader))
        counts = await statements.play_counts(reader, *P1)
    now = {line.key: line.amount for line in billing.statement_lines(counts, priced)}
    billed = {k: Decimal(v["amount"]) for k, v in lines(final).items()}
    for document in later:
        for item in json.loads(document)["adjustments"]:
            if item["period_from"] == rfc3339(P1[0]):
                line = (item["supplier_id"], item["campaign_id"], item["ad_group_id"])
                billed[line] += Decimal(item["amount"])
    assert billed == now


async def test_two_statements_turning_final_at_once_bill_a_correction_once(
    store: Store,
) -> None:
    """The same period under two zone names: two statements, one of them adjusts P1."""
    await book_and_play(store)
    await asked(store, P1, settles(P1))
    await import_catalog(store, catalog(pp_from="10:05"))
    await drain(store)
    both = await asyncio.gather(
        asked(store, P2, settles(P2)), asked(store, P2, settles(P2), tz="Europe/London")
    )
    assert [json.loads(d)["status"] for d in both] == ["final", "final"]
    carried = sorted(len(adjustments(d)) for d in both)
    assert carried == [0, 1], "the second to be kept counted again and found it billed"


async def test_a_retired_campaigns_plays_are_still_priced(store: Store) -> None:
    await book_and_play(store)
    await import_catalog(store, catalog(cpm=False), replace=True)
    doc = await asked(store, P1, P1[1] - 1)
    cpm = lines(doc)[("sup-j", "cmp-cpm", "ag-j")]
    assert (cpm["price_model"], cpm["amount"], cpm["currency"]) == ("cpm", "30", "JPY")


async def test_filters_make_a_statement_of_their_own(store: Store) -> None:
    """A supplier's statement has its lines only, and is kept apart from the whole one."""
    await book_and_play(store)
    whole = json.loads(await asked(store, P1, settles(P1)))
    alone = json.loads(await asked(store, P1, settles(P1), supplier_id="sup-j"))
    assert alone["filters"] == {"supplier_id": "sup-j", "campaign_id": None}
    assert [x for x in whole["lines"] if x["supplier_id"] == "sup-j"] == alone["lines"]
    assert whole["digest"] != alone["digest"]
    assert alone["status"] == whole["status"] == "final"


async def test_keeping_a_statement_is_refused_when_what_it_adjusts_moved_meanwhile(
    store: Store,
) -> None:
    """Two statements adjusting the same final one at once: the second must count again."""
    await book_and_play(store)
    first = await asked(store, P1, settles(P1))
    billed = Billed(key(P1), "[]", 0, rev=0)
    moved = FinalStatement(key(P2), '{"a":1}', "d", settles(P2), Billed(key(P2), "[]", 0))
    assert await store.save_statement(moved, [Rebase(billed, "[]", 1)]) == '{"a":1}'
    late = FinalStatement(key(P3), '{"b":2}', "d", settles(P3), Billed(key(P3), "[]", 0))
    with pytest.raises(Conflict):
        await store.save_statement(late, [Rebase(billed, "[]", 2)])  # revision 0 is gone
    assert await stored(store, P3) is None, "nothing of a refused statement is kept"
    again = FinalStatement(key(P1), "other", "d", settles(P1), Billed(key(P1), "[]", 0))
    assert await store.save_statement(again, []) == first.decode(), "the first kept wins"


# --- agreement with the delivery and verification reports --------------------------

STATEMENT_FILTERS = {"supplier_id": ["sup-1", "sup-2"], "campaign_id": ["cmp-a", "cmp-b", "cmp-x"]}
statement_asks = st.builds(
    lambda start, length, zone, where: (start, start + length, zone, dict(where)),
    vrt.moments,
    vrt.lengths,
    st.sampled_from(ZONES),
    st.lists(
        st.sampled_from(sorted(STATEMENT_FILTERS)).flatmap(
            lambda name: st.tuples(st.just(name), st.sampled_from(STATEMENT_FILTERS[name]))
        ),
        max_size=2,
        unique_by=lambda f: f[0],
    ),
)


async def three_answers(url: str, params: dict[str, str]) -> tuple[Any, Any, Any, Any]:
    """The statement (provisional: asked before its period ends), and the reports' tables."""
    store = open_store(url, Path("/nonexistent-blobs"))
    await store.open()
    try:
        groups = "supplier_id,campaign_id,ad_group_id"
        document = await statements.billing_statement(store, params, 0, DEFAULT_POLICY)
        delivery = await reports.delivery(store, {**params, "group_by": groups})
        verified = await verification_report.verification(store, {**params, "group_by": groups})
        reasons = {**params, "group_by": groups + ",reason"}
        by_reason = await verification_report.verification(store, reasons)
        return json.loads(document), delivery, verified, by_reason
    finally:
        await store.close()


@pytest.fixture
def fleet(any_url: str, tmp_path: Path) -> str:
    """A store of either kind holding the verification report's varied, decided plays."""

    async def run() -> None:
        store = open_store(any_url, tmp_path / "blobs")
        await store.open()
        try:
            await vrt.seed(store)
        finally:
            await store.close()

    asyncio.run(run())
    return any_url


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(asked=statement_asks)
def test_the_statement_agrees_with_the_delivery_and_verification_reports(
    fleet: str, asked: tuple[int, int, str, dict[str, str]]
) -> None:
    """Plays, valid and partial are the delivery report's; verified, failed, their reasons and
    pending the verification report's; billable + failed + pending = valid, line by line."""
    start, end, zone, where = asked
    params = {"from": rfc3339(start) or "", "to": rfc3339(end) or "", "tz": zone, **where}
    document, delivery, verified, by_reason = asyncio.run(three_answers(fleet, params))
    assert document["status"] == "provisional"
    got = {(x["supplier_id"], x["campaign_id"], x["ad_group_id"]): x for x in document["lines"]}
    assert list(got) == sorted(got), "lines by supplier, campaign, ad group"
    delivered = {tuple(r[:3]): r[3:6] for r in delivery.rows}
    assert {k: [x["plays"], x["valid"], x["partial"]] for k, x in got.items()} == delivered
    decided = {tuple(r[:3]): r[3:] for r in verified.rows}
    assert {
        k: [x["valid"], x["verified"], x["failed"], x["pending"]]
        for k, x in got.items()
        if x["valid"]
    } == decided
    reasons: dict[tuple[Any, ...], dict[str, int]] = {}
    for row in by_reason.rows:
        reasons.setdefault(tuple(row[:3]), {})[row[3]] = row[4]
    assert {k: x["failed_by_reason"] for k, x in got.items() if x["failed"]} == reasons
    for line in got.values():
        assert line["billable_plays"] + line["failed"] + line["pending"] == line["valid"]
        assert line["billable_plays"] == line["verified"]
    whole = delivery.meta["totals"]
    by_currency = document["totals"]["by_currency"]
    assert sum(t["plays"] for t in by_currency) == whole["plays"]
    assert sum(t["valid"] for t in by_currency) == whole["valid"]
    counted = sum(x["billable_plays"] for x in got.values())
    assert sum(Decimal(t["amount"]) for t in by_currency) == Decimal(counted) / 100
