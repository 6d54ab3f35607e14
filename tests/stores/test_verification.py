"""Verification on both stores: the catalog kept with its changes, the verifier's decisions.

The verifier is the real one (server/verifier.py) on a fixed service clock, so
every decision here is the one `playproof serve` would make.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from playproof.catalog import Catalog, Change, check_references, parse_catalog
from playproof.catalog_merge import merge
from playproof.errors import CatalogError
from playproof.server.metrics import Metrics
from playproof.server.verifier import Verifier
from playproof.stores import verification_queries as vq
from playproof.stores.base import DeviceInfo, Store
from tests.stores.conftest import query
from tests.stores.pipeline import batch
from tests.support import make_record

# Wednesday 2026-12-02, 12:00 in London (UTC in winter).
NOON: int = int(datetime(2026, 12, 2, 12, tzinfo=UTC).timestamp() * 1000)


def catalog_doc(**campaign: Any) -> dict[str, Any]:
    """A catalog booking what tests.support.make_record plays, with campaign overrides."""
    base: dict[str, Any] = {
        "campaign_id": "cmp-1",
        "supplier_id": "sup-1",
        "name": "Winter",
        "flight": {"from": "2026-12-01", "to": "2027-01-01"},
        "targets": {"stores": [], "devices": []},
        "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
        "price": {"model": "per_play", "amount": "0.0125", "currency": "EUR"},
    }
    return {
        "suppliers": [{"supplier_id": "sup-1", "name": "Acme", "currency": "EUR"}],
        "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
        "devices": [{"device_id": "scr-1", "zones": 1}],
        "contents": [{"content_id": "cnt-1", "expected_ms": 15000}],
        "campaigns": [{**base, **campaign}],
    }


async def import_catalog(store: Store, doc: dict[str, Any], replace: bool = False) -> list[Change]:
    incoming = parse_catalog(json.dumps(doc).encode())

    def update(current: Catalog) -> tuple[Catalog, list[Change]]:
        merged, changes = merge(current, incoming, replace)
        check_references(merged)
        return merged, changes

    return await store.update_catalog(update, NOON)


def play(seq: int, start: int, length: int = 15_000, **fields: Any) -> Any:
    return make_record(seq=seq, start_ts=start, end_ts=start + length, duration_ms=length, **fields)


async def ingest(store: Store, *records: Any) -> None:
    await store.commit([batch(list(records), received_at=NOON + 60_000)])


def verifier(store: Store, at: int = NOON + 120_000) -> Verifier:
    return Verifier(store, clock=lambda: at)


async def decisions(store: Store) -> list[tuple[Any, ...]]:
    return await query(
        store,
        "SELECT seq, verification, verification_reasons FROM impressions ORDER BY seq",
    )


@pytest.fixture
async def registered(store: Store) -> Store:
    await store.add_device(DeviceInfo("scr-1", "store-1", NOON, None), "hash-scr-1")
    return store


async def test_a_booked_play_is_verified_and_an_unbooked_one_fails_with_its_reason(
    registered: Store,
) -> None:
    store = registered
    await import_catalog(store, catalog_doc())
    await ingest(store, play(1, NOON), play(2, NOON + 20_000, campaign_id="cmp-x"))
    assert await verifier(store).drain() == 2
    assert await decisions(store) == [(1, "verified", ""), (2, "failed", "unknown_campaign")]
    assert await verifier(store).drain() == 0, "each play is decided once"


async def test_every_reason_that_applies_is_kept_together(registered: Store) -> None:
    store = registered
    doc = catalog_doc(targets={"stores": ["store-9"], "devices": []}, min_quality=100)
    doc["stores"].append({"store_id": "store-9", "time_zone": "Europe/London"})
    await import_catalog(store, doc)
    await ingest(store, play(1, NOON, supplier_id="sup-2", content_id="cnt-2", clock_synced=False))
    await verifier(store).drain()
    (row,) = await decisions(store)
    assert row[1:] == (
        "failed",
        "not_targeted,content_not_in_campaign,supplier_mismatch,low_quality",
    )


async def test_the_play_stored_first_keeps_its_place_and_an_overlapping_one_fails(
    registered: Store,
) -> None:
    store = registered
    await import_catalog(store, catalog_doc())
    await ingest(store, play(1, NOON), play(2, NOON + 13_499), play(3, NOON + 13_500))
    await verifier(store).drain()
    assert await decisions(store) == [
        (1, "verified", ""),
        (2, "failed", "overlap"),  # 1.501 s into play 1
        (3, "verified", ""),  # exactly 1.5 s: allowed
    ]


async def test_a_campaign_imported_late_turns_unknown_campaign_into_verified(
    registered: Store,
) -> None:
    store = registered
    await ingest(store, play(1, NOON))
    await verifier(store).drain()
    assert await decisions(store) == [(1, "failed", "unknown_campaign")]
    changes = await import_catalog(store, catalog_doc())
    assert {(c.kind, c.action) for c in changes} >= {("campaign", "added")}
    assert await decisions(store) == [(1, "pending", None)], "sent back by the change"
    await verifier(store).drain()
    assert await decisions(store) == [(1, "verified", "")]
    history = await vq.verification_log(store, ("scr-1", "j-1", 1))
    assert [(status, reasons) for _, status, reasons, _ in history] == [
        ("failed", "unknown_campaign"),
        ("pending", ""),
        ("verified", ""),
    ]
    counts = await query(
        store,
        "SELECT status, reason, SUM(plays) FROM rollup_verification GROUP BY status, reason "
        "ORDER BY status, reason",
    )
    assert [tuple(r) for r in counts] == [
        ("failed", "", 0),
        ("failed", "unknown_campaign", 0),
        ("verified", "", 1),
    ], "the rollup follows the decisions, the first undone"
    assert await query(
        store,
        "SELECT bucket, campaign_id, ad_group_id, supplier_id, status, reason, plays "
        "FROM rollup_verification_line WHERE plays <> 0 ORDER BY 1, 2, 3, 4, 5, 6",
    ) == await query(
        store,
        "SELECT bucket, campaign_id, ad_group_id, supplier_id, status, reason, SUM(plays) "
        "FROM rollup_verification GROUP BY 1, 2, 3, 4, 5, 6 HAVING SUM(plays) <> 0 "
        "ORDER BY 1, 2, 3, 4, 5, 6",
    ), "the line rollup holds the same counts without the screen"


async def test_saving_decisions_names_the_statuses_written_and_leaves_out_plays_decided_meanwhile(
    registered: Store,
) -> None:
    """Another verifier decided play 2 between this one's read and its save: the save
    writes plays 1 and 3 and names their statuses only, so that the verifier counts
    (playproof_verification_decisions) what it wrote, not the first two of its three."""
    from playproof.verification import Decision

    store = registered
    await import_catalog(store, catalog_doc())
    await ingest(store, play(1, NOON), play(2, NOON + 20_000), play(3, NOON + 40_000))
    load = await store.load_screen("scr-1", NOON + 60_000, 10)
    first, second, third = load.state.pending
    version = (await store.load_catalog()).version
    other = [(second, Decision("failed", ("overlap",)))]
    assert await store.save_decisions(other, NOON, version) == ["failed"]
    mine = [
        (first, Decision("verified", ())),
        (second, Decision("verified", ())),
        (third, Decision("failed", ("low_quality",))),
    ]
    assert await store.save_decisions(mine, NOON, version) == ["verified", "failed"]
    assert await decisions(store) == [
        (1, "verified", ""),
        (2, "failed", "overlap"),
        (3, "failed", "low_quality"),
    ]


async def test_the_verifier_counts_its_decisions_by_status(registered: Store) -> None:
    store = registered
    metrics = Metrics()
    await import_catalog(store, catalog_doc())
    await ingest(store, play(1, NOON), play(2, NOON + 20_000, campaign_id="cmp-x"))
    await Verifier(store, clock=lambda: NOON + 120_000, metrics=metrics).drain()
    counted = {
        status: metrics.registry.get_sample_value(
            "playproof_verification_decisions_total", {"status": status}
        )
        for status in ("verified", "failed")
    }
    assert counted == {"verified": 1.0, "failed": 1.0}


async def test_importing_the_same_catalog_twice_changes_nothing(registered: Store) -> None:
    store = registered
    assert await import_catalog(store, catalog_doc())
    assert await import_catalog(store, catalog_doc()) == []
    assert (await store.load_catalog()).version == 5, "one change per entry, kept"


async def test_replace_retires_what_the_file_omits_and_keeps_history(registered: Store) -> None:
    store = registered
    await import_catalog(store, catalog_doc())
    await ingest(store, play(1, NOON))
    await verifier(store).drain()
    doc = catalog_doc()
    doc["campaigns"] = []
    changes = await import_catalog(store, doc, replace=True)
    assert [(c.kind, c.id, c.action) for c in changes] == [("campaign", "cmp-1", "retired")]
    state = await store.load_catalog()
    assert state.catalog.campaigns == [] and "cmp-1" in state.retired
    assert await decisions(store) == [(1, "verified", "")], "its decided plays keep history"


async def test_a_catalog_naming_what_does_not_exist_is_refused_whole(registered: Store) -> None:
    store = registered
    doc = catalog_doc(supplier_id="sup-unknown")
    with pytest.raises(CatalogError, match="sup-unknown"):
        await import_catalog(store, doc)
    assert (await store.load_catalog()).version == 0


async def test_a_required_screenshot_holds_its_screen_until_it_arrives_or_the_grace_ends(
    registered: Store,
) -> None:
    store = registered
    await import_catalog(store, catalog_doc(require_screenshot=True))
    sha = "ab" * 32
    shot = {"screenshot_sha256": sha, "screenshot_at_ms": 7_500}
    await ingest(store, play(1, NOON, **shot), play(2, NOON + 20_000, **shot))
    assert await verifier(store).drain() == 0, "waiting for the screenshot"
    assert [r[1] for r in await decisions(store)] == ["pending", "pending"]
    late = NOON + 60_000 + 3_600_000  # the grace (1 h) from received_at has passed
    assert await verifier(store, late).drain() == 2
    assert await decisions(store) == [
        (1, "failed", "screenshot_missing"),
        (2, "failed", "screenshot_missing"),
    ]


async def test_a_decision_made_against_an_older_catalog_is_not_written(registered: Store) -> None:
    store = registered
    await import_catalog(store, catalog_doc())
    await ingest(store, play(1, NOON))
    load = await store.load_screen("scr-1", NOON + 60_000, 10)
    assert len(load.state.pending) == 1
    from playproof.verification import Decision

    stale = [(load.state.pending[0], Decision("verified", ()))]
    version = (await store.load_catalog()).version
    await import_catalog(store, catalog_doc(min_quality=50))
    assert await store.save_decisions(stale, NOON, version) is None
    assert await decisions(store) == [(1, "pending", None)]
