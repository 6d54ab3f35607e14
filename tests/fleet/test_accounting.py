"""Verification accounting: every valid play held is decided, or has a reason to wait.

The rules first, on rows as the store returns them; then on both stores with
the real verifier (server/verifier.py) deciding, and through the reconciliation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from playproof.catalog import index, parse_catalog
from playproof.device.journal import Journal
from playproof.fleet import report
from playproof.fleet.accounting import (
    BEHIND,
    SCREENSHOT,
    SETTLING,
    STUCK,
    UNJUDGED,
    Requirements,
    Row,
    Verification,
    Waits,
    account,
    once_unknown,
    rows_of,
)
from playproof.fleet.reconcile import reconcile
from playproof.protocol import seal
from playproof.rules import HOUR_MS
from playproof.server import catalogs
from playproof.server.verifier import Verifier
from playproof.stores.base import DeviceInfo, Store
from tests.stores.pipeline import batch
from tests.support import make_record

NOW = 1_800_000_000_000
SETTLE = 5_000
GRACE = HOUR_MS
SHA = "ab" * 32


def catalog_doc() -> dict[str, Any]:
    """cmp-1 as tests.support.make_record plays it; cmp-shot the same, requiring a screenshot."""
    campaign = {
        "supplier_id": "sup-1",
        "flight": {"from": "2020-01-01", "to": "2099-01-01"},
        "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
        "price": {"model": "per_play", "amount": "0.01", "currency": "EUR"},
    }
    return {
        "suppliers": [{"supplier_id": "sup-1", "currency": "EUR"}],
        "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
        "contents": [{"content_id": "cnt-1", "expected_ms": 15000}],
        "campaigns": [
            {"campaign_id": "cmp-1", **campaign},
            {"campaign_id": "cmp-shot", "require_screenshot": True, **campaign},
        ],
    }


NEEDS = Requirements(index(parse_catalog(json.dumps(catalog_doc()).encode())).campaigns, {})


def row(seq: int, verification: str | None = "pending", **fields: Any) -> Row:
    base: dict[str, Any] = {
        "device_id": "scr-1",
        "journal_id": "j-1",
        "seq": seq,
        "status": "valid",
        "verification": verification,
        "reasons": None,
        "received_at": NOW - HOUR_MS // 2 + seq,
        "campaign_id": "cmp-1",
        "start_ts": NOW - HOUR_MS,
        "screenshot_sha256": None,
        "uploaded": False,
    }
    return Row(**{**base, **fields})


WAITS = Waits(NOW, SETTLE, GRACE)


def tally(*rows: Row, waits: Waits | None = WAITS) -> Verification:
    found = Verification()
    account(found, rows, NEEDS, waits, lambda *_: None)
    return found


# --- the rules ------------------------------------------------------------------------


def test_decided_plays_are_counted_by_status_and_failures_under_each_reason() -> None:
    found = tally(
        row(1, "verified", reasons=""),
        row(2, "failed", reasons="not_targeted,overlap"),
        row(3, "failed", reasons="overlap"),
        row(4, None, status="partial"),
    )
    assert (found.valid, found.verified, found.failed) == (3, 1, 2)
    assert found.reasons == {"not_targeted": 1, "overlap": 2}
    assert found.ok and sum(found.pending.values()) == 0


def test_a_play_received_within_the_settle_time_waits_and_one_at_the_watermark_does_not() -> None:
    """The verifier takes plays received at or before now - settle: that one has no excuse."""
    found = tally(row(1, received_at=NOW - SETTLE + 1), row(2, received_at=NOW - SETTLE))
    assert found.pending == {SETTLING: 1, STUCK: 1}
    assert not found.ok


def test_a_required_screenshot_not_yet_uploaded_holds_its_play_until_the_grace_runs_out() -> None:
    waiting = row(1, campaign_id="cmp-shot", screenshot_sha256=SHA, received_at=NOW - GRACE + 1)
    late = waiting._replace(received_at=NOW - GRACE)
    assert tally(waiting).pending == {SCREENSHOT: 1}
    assert tally(late).pending == {STUCK: 1}, "the grace is over: missing, to be decided"


def test_a_screenshot_is_no_reason_to_wait_when_uploaded_or_not_required() -> None:
    uploaded = row(1, campaign_id="cmp-shot", screenshot_sha256=SHA, uploaded=True)
    unrequired = row(2, screenshot_sha256=SHA)
    unnamed = row(3, campaign_id="cmp-shot")
    assert tally(uploaded, unrequired, unnamed).pending == {STUCK: 3}


def test_plays_stored_after_one_waiting_for_its_screenshot_wait_behind_it_on_that_screen() -> None:
    first = row(1, campaign_id="cmp-shot", screenshot_sha256=SHA)
    before = row(0, received_at=first.received_at - 1)
    after = row(2, received_at=first.received_at + 1)
    elsewhere = row(3, device_id="scr-2", received_at=first.received_at + 1)
    found = tally(after, elsewhere, first, before)
    assert found.pending == {STUCK: 2, SCREENSHOT: 1, BEHIND: 1}


def test_a_valid_play_outside_verification_or_a_partial_one_inside_it_fails_the_account() -> None:
    assert tally(row(1, None)).unaccounted == 1
    assert tally(row(1, "unknown")).unaccounted == 1
    judged = tally(row(1, "verified", status="partial"))
    assert (judged.partial_judged, judged.valid, judged.ok) == (1, 0, False)


def test_without_the_services_clock_pending_plays_are_counted_not_judged() -> None:
    found = tally(row(1), waits=None)
    assert found.pending == {UNJUDGED: 1} and found.ok


# --- on the stores, with the real verifier ------------------------------------------------


@pytest.fixture
async def booked(store: Store) -> Store:
    await store.add_device(DeviceInfo("scr-1", "store-1", NOW, None), "hash-scr-1")
    await catalogs.import_catalog(store, json.dumps(catalog_doc()).encode(), False, NOW)
    return store


def play(seq: int, **fields: Any) -> Any:
    start = NOW - HOUR_MS + seq * 20_000
    return make_record(seq=seq, start_ts=start, end_ts=start + 15_000, **fields)


async def accounted(store: Store, waits: Waits) -> Verification:
    found = Verification()
    account(found, await rows_of(store, ["scr-1"]), await Requirements.load(store), waits, _note)
    return found


def _note(*_: object) -> None:
    pass


async def test_the_stores_plays_are_accounted_as_the_verifier_left_them(booked: Store) -> None:
    store = booked
    records = [
        play(1),
        play(2, campaign_id="cmp-x"),
        play(3, campaign_id="cmp-shot", screenshot_sha256=SHA, screenshot_at_ms=7_000),
        play(4),
        play(5, end_reason="skipped", duration_ms=2_000),
    ]
    await store.commit([batch(records, received_at=NOW)])
    soon = NOW + 60_000
    await Verifier(store, clock=lambda: soon).drain()
    found = await accounted(store, Waits(soon))
    assert (found.valid, found.verified, found.failed) == (4, 1, 1)
    assert found.reasons == {"unknown_campaign": 1}
    assert found.pending == {SCREENSHOT: 1, BEHIND: 1} and found.ok
    # The grace runs out: nothing left to wait for, until the verifier decides them.
    later = NOW + GRACE + 60_000
    assert (await accounted(store, Waits(later))).pending == {STUCK: 2}
    await Verifier(store, clock=lambda: later).drain()
    done = await accounted(store, Waits(later))
    assert (done.verified, done.failed, done.reasons["screenshot_missing"]) == (2, 2, 1)
    assert done.ok and sum(done.pending.values()) == 0


async def test_a_campaign_imported_late_shows_its_plays_once_unknown_now_verified(
    booked: Store,
) -> None:
    store = booked
    await store.commit([batch([play(1, campaign_id="cmp-late")], received_at=NOW)])
    await Verifier(store, clock=lambda: NOW + 60_000).drain()
    assert await once_unknown(store, "cmp-late") == {"failed": 1}
    doc = catalog_doc()
    late = {**doc["campaigns"][0], "campaign_id": "cmp-late"}
    await catalogs.import_catalog(store, json.dumps({"campaigns": [late]}).encode(), False, NOW)
    await Verifier(store, clock=lambda: NOW + 120_000).drain()
    assert await once_unknown(store, "cmp-late") == {"verified": 1}


# --- through the reconciliation -----------------------------------------------------------


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = await Journal.open(tmp_path / "device", "scr-1")
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_the_reconciliation_fails_while_a_settled_valid_play_is_undecided(
    booked: Store, journal: Journal
) -> None:
    store = booked
    record = seal(await journal.begin(play(1, journal_id=journal.journal_id)))
    await journal.close(record)
    await store.commit([batch([record], received_at=NOW)])
    await journal.remove([record.seq], ["accepted:valid"])
    later = Waits(NOW + 60_000)
    stuck = await reconcile(store, [await journal.ledger()], waits=later)
    assert (stuck.total.lost, stuck.verification.stuck, stuck.ok) == (0, 1, False)
    assert [f.kind for f in stuck.findings] == ["pending_stuck"]
    assert "1 valid plays stuck in verification" in report.verdict(stuck).plain
    await Verifier(store, clock=lambda: later.now_ms).drain()
    clean = await reconcile(store, [await journal.ledger()], waits=later)
    assert clean.ok and clean.verification.verified == 1
    assert "verified, failed or waiting" in report.verdict(clean).plain
