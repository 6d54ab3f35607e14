"""The catalog the fleet simulator books its screens with, and the pictures its screens show."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from playproof import imaging
from playproof.catalog import Catalog, check_references, index, parse_catalog
from playproof.catalog_merge import merge
from playproof.fleet.bookings import Bookings, book, write
from playproof.fleet.pictures import SimulatedCapture, picture
from playproof.fleet.plan import HOUR_MS, Faults, FleetOptions, ScreenPlan, build
from playproof.verification import content_in_campaign, in_flight, targeted

# Wednesday 2026-06-10, 09:00 UTC: a run the catalog must cover.
NOW = int(datetime(2026, 6, 10, 9, tzinfo=UTC).timestamp() * 1000)


def fleet(devices: int = 40, breaks: bool = False) -> tuple[list[ScreenPlan], FleetOptions]:
    options = FleetOptions(
        devices, 2 * HOUR_MS, Path("/fleet"), seed=3, screenshots=4, breaks=breaks
    )
    return build(options, 10.0), options


def parsed(document: dict[str, object]) -> Catalog:
    """Through the service's own parser and reference check, as `PUT /v1/catalog` does."""
    catalog = parse_catalog(json.dumps(document).encode())
    check_references(catalog)
    return catalog


def booked(breaks: bool = False) -> tuple[list[ScreenPlan], Bookings, Catalog]:
    screens, options = fleet(breaks=breaks)
    bookings = book(screens, options, NOW)
    return screens, bookings, parsed(bookings.document)


def test_the_fleets_catalog_parses_and_every_reference_checks() -> None:
    screens, _, catalog = booked()
    assert {s.store_id for s in catalog.stores} == {s.store_id for s in screens}
    assert [d.device_id for d in catalog.devices] == [s.device_id for s in screens]
    assert len(catalog.campaigns) == 24 and len(catalog.contents) == 24 * 5
    assert len(catalog.suppliers) == 8


def test_it_carries_what_billing_exports_need() -> None:
    _, _, catalog = booked()
    for device in catalog.devices:
        ids = device.external_ids
        assert len(ids["frame_id"]) == 10 and ids["frame_id"].isdigit()
        assert ids["ad_unit"] and ids["player_ref"]
    assert all(c.external_ids["creative"] for c in catalog.contents)
    for campaign in catalog.campaigns:
        assert set(campaign.external_ids) == {"order", "line", "spacebuyerid", "spaceagencyid"}
        assert campaign.impressions_per_play.multiplier_decimal() > 0
    assert {c.price.model for c in catalog.campaigns} == {"per_play", "cpm"}
    assert {s.time_zone for s in catalog.stores} == {
        "Europe/London",
        "Europe/Berlin",
        "Asia/Kathmandu",
    }


def test_one_supplier_bills_in_gbp_and_its_campaigns_are_priced_in_gbp() -> None:
    _, _, catalog = booked()
    currencies = {s.supplier_id: s.currency for s in catalog.suppliers}
    assert sorted(currencies.values()).count("GBP") == 1
    assert set(currencies.values()) == {"EUR", "GBP"}
    for campaign in catalog.campaigns:
        assert campaign.price.currency == currencies[campaign.supplier_id]


def test_every_play_the_playlists_make_is_booked_for_its_screen_all_through_the_run() -> None:
    screens, bookings, catalog = booked()
    known = index(catalog)
    zones = {s.store_id: ZoneInfo(s.time_zone) for s in catalog.stores}
    # The run starts now and lasts two hours; clocks may be hours off, records held.
    instants = [NOW - 12 * HOUR_MS, NOW, NOW + 2 * HOUR_MS, NOW + 26 * HOUR_MS]
    for screen in screens:
        for item in screen.playlist:
            campaign = known.campaigns[item.campaign_id]
            assert content_in_campaign(campaign, item.ad_group_id, item.content_id)
            assert campaign.supplier_id == item.supplier_id
            assert targeted(campaign, screen.device_id, screen.store_id)
            for at in instants:
                assert in_flight(campaign, zones[screen.store_id], at), (campaign, at)
    assert bookings.late is None and bookings.first() == bookings.document


def test_the_same_fleet_booked_again_later_that_month_is_the_same_document() -> None:
    """A re-run imports an identical catalog, which changes nothing."""
    screens, options = fleet()
    two_days_later = NOW + 48 * HOUR_MS
    assert book(screens, options, NOW).document == book(screens, options, two_days_later).document


def test_the_demos_breaks_book_one_campaign_for_one_store_and_one_late() -> None:
    screens, bookings, catalog = booked(breaks=True)
    breaks = bookings.breaks
    assert breaks.one_store is not None and breaks.late is not None
    campaign_id, store_id = breaks.one_store
    campaign = index(catalog).campaigns[campaign_id]
    assert campaign.targets.stores == [store_id]
    played_in = {s.store_id for s in screens for i in s.playlist if i.campaign_id == campaign_id}
    assert store_id in played_in and len(played_in) > 1, "its plays elsewhere fail not_targeted"
    first = parsed(bookings.first())
    assert breaks.late not in index(first).campaigns, "left out of the first import"
    assert any(i.campaign_id == breaks.late for s in screens for i in s.playlist)
    # The late import merges into the first, as the service merges it, to the whole catalog.
    late = parse_catalog(json.dumps({"campaigns": [bookings.late]}).encode())
    merged, changes = merge(first, late, replace=False)
    check_references(merged)
    assert merged == catalog and [(c.kind, c.id, c.action) for c in changes] == [
        ("campaign", breaks.late, "added")
    ]
    assert "not_targeted" in breaks.describe() and "unknown_campaign" in breaks.describe()


def test_the_demos_screens_layer_a_banner_on_one_and_show_a_wrong_picture_on_another() -> None:
    screens, bookings, catalog = booked(breaks=True)
    breaks = bookings.breaks
    assert breaks.banner is not None and breaks.wrong is not None
    banner_screen = next(s for s in screens if s.device_id == breaks.banner[0])
    assert not banner_screen.capture and banner_screen.playlist[0].banner is not None
    wrong_screen = next(s for s in screens if s.device_id == breaks.wrong[0])
    assert wrong_screen.capture and wrong_screen.wrong == (breaks.wrong[1:],)
    assert sum(s.capture for s in screens) == 4
    assert all(d.zones == 1 for d in catalog.devices), "the banner screen is booked one zone"


def test_the_catalog_and_its_pictures_are_written_beside_the_fleet(tmp_path: Path) -> None:
    """So that `playproof catalog import <devices-dir>/catalog.json` reads the same."""
    _, bookings, _ = booked()
    path = write(bookings, tmp_path)
    catalog = parsed(json.loads(path.read_text()))
    for content in catalog.contents:
        (name,) = content.reference_images
        assert (tmp_path / name).read_bytes() == picture(content.content_id)


# --- pictures ------------------------------------------------------------------------


CONTENTS = [f"cnt-{c:03d}-{k}" for c in range(24) for k in range(5)]


def test_a_screenshot_matches_its_contents_reference_and_no_other() -> None:
    references = {c: imaging.fingerprint(picture(c)) for c in CONTENTS}
    for content in CONTENTS:
        shot = imaging.fingerprint(picture(content, caption="23:59:59"))
        assert not shot.blank
        assert imaging.matches(shot, [references[content].phash])
        others = [r.phash for c, r in references.items() if c != content]
        assert not imaging.matches(shot, others), content


@pytest.mark.parametrize("wrong", [False, True])
async def test_the_simulated_capture_draws_what_the_screen_shows(wrong: bool) -> None:
    showing: list[str | None] = [None]
    swap = {"cnt-001-2": "cnt-002-2"} if wrong else {}
    capture = SimulatedCapture(lambda: showing[0], lambda: NOW / 1000, swap)
    assert await capture.capture() is None, "nothing on screen, nothing to take"
    showing[0] = "cnt-001-2"
    png = await capture.capture()
    assert png is not None
    facts = imaging.fingerprint(png)
    shown = "cnt-002-2" if wrong else "cnt-001-2"
    assert imaging.matches(facts, [imaging.fingerprint(picture(shown)).phash])
    assert imaging.matches(facts, [imaging.fingerprint(picture("cnt-001-2")).phash]) is not wrong


def test_a_fleet_of_one_store_without_faults_is_booked_too() -> None:
    options = FleetOptions(3, HOUR_MS, Path("/fleet"), faults=Faults.none())
    parsed(book(build(options, 1.0), options, NOW).document)
