"""Verification decisions, with hypothesis pinning the overlap, cap, flight and daypart edges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.catalog import (
    AdGroup,
    Campaign,
    Cap,
    Catalog,
    Daypart,
    DeviceEntry,
    Flight,
    Price,
    StoreEntry,
    Targets,
    index,
)
from playproof.verification import (
    DEFAULT_GRACE_MS,
    FALLBACK_ZONE,
    OVERLAP_TOLERANCE_MS,
    REASONS,
    Decision,
    History,
    Play,
    Screen,
    ScreenshotFacts,
    decide,
    in_flight,
    local_date,
    must_wait,
    overlap_fails,
    overlaps,
    screen_of,
    screenshot_timing_ok,
    targeted,
)

HOUR = 3_600_000
DAY = 24 * HOUR
UTC_ZONE = ZoneInfo("UTC")
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
T0 = 1_781_697_600_000  # Wednesday 2026-06-17 12:00 UTC
SHA = "ab" * 32


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Epoch milliseconds of a UTC date and time."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def make_campaign(**changes: object) -> Campaign:
    base = Campaign(
        campaign_id="cmp-1",
        supplier_id="sup-1",
        flight=Flight(from_="2026-01-01", to="2027-01-01"),
        ad_groups=[AdGroup(ad_group_id="ag-1", contents=["cnt-1"])],
        price=Price(model="per_play", amount="0.01", currency="EUR"),
    )
    return msgspec.structs.replace(base, **changes)


def make_play(**changes: Any) -> Play:
    play = Play(
        device_id="scr-1",
        journal_id="j-1",
        seq=1,
        campaign_id="cmp-1",
        ad_group_id="ag-1",
        content_id="cnt-1",
        supplier_id="sup-1",
        start_ts=T0,
        end_ts=T0 + 10_000,
        expected_ms=10_000,
        quality=100,
        screenshot_sha256=None,
        screenshot_at_ms=None,
        received_at=T0 + 20_000,
    )
    return play._replace(**changes)


SCREEN = Screen("store-1", UTC_ZONE, 1)


def flight_campaign(start: str, end: str, *parts: Daypart) -> Campaign:
    return make_campaign(flight=Flight(from_=start, to=end, dayparts=list(parts)))


def part(days: str, start: str, end: str) -> Daypart:
    return Daypart(days=days, from_=start, to=end)


def test_a_play_that_meets_every_rule_is_verified() -> None:
    decision = decide(make_play(), make_campaign(), SCREEN, History())
    assert decision == Decision("verified", ()) and decision.verified


# --- overlap -------------------------------------------------------------------

starts = st.integers(0, 10**12)
lengths = st.integers(OVERLAP_TOLERANCE_MS + 1, 10 * HOUR)


@given(start=starts, earlier_len=lengths, length=lengths)
def test_an_overlap_of_exactly_1500_ms_passes_and_1501_fails(
    start: int, earlier_len: int, length: int
) -> None:
    earlier = [(start, start + earlier_len)]
    end = start + earlier_len
    assert overlaps((end - 1500, end - 1500 + length), earlier[0]) == 1500
    assert not overlap_fails(end - 1500, end - 1500 + length, earlier, 1)
    assert overlap_fails(end - 1501, end - 1501 + length, earlier, 1)
    # The same at the other edge: a play ending inside the earlier one's start.
    assert not overlap_fails(start + 1500 - length, start + 1500, earlier, 1)
    assert overlap_fails(start + 1501 - length, start + 1501, earlier, 1)


@given(a=st.tuples(starts, lengths), b=st.tuples(starts, lengths))
def test_overlap_is_symmetric_and_never_negative(a: tuple[int, int], b: tuple[int, int]) -> None:
    first, second = (a[0], a[0] + a[1]), (b[0], b[0] + b[1])
    assert overlaps(first, second) == overlaps(second, first) >= 0


@given(zones=st.integers(1, 6), start=starts)
def test_a_screen_with_n_zones_may_show_n_at_once(zones: int, start: int) -> None:
    play = (start, start + 10_000)
    under = [play] * (zones - 1) + [(start - 60_000, start - 30_000)]
    assert not overlap_fails(*play, under, zones)
    assert overlap_fails(*play, [play] * zones, zones)


def test_the_overlap_reason_comes_from_earlier_kept_plays_on_the_screen() -> None:
    history = History(earlier_kept=[(T0 - 5_000, T0 + 5_000)])
    decision = decide(make_play(), make_campaign(), SCREEN, history)
    assert decision == Decision("failed", ("overlap",))
    two_zones = SCREEN._replace(zones=2)
    assert decide(make_play(), make_campaign(), two_zones, history).verified


# --- flight and dayparts ----------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]


def local_midnight(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


@given(
    zone=st.sampled_from(ZONES),
    first=st.dates(date(2020, 1, 1), date(2035, 12, 31)),
    days=st.integers(1, 400),
)
def test_a_flight_runs_from_local_midnight_of_from_to_just_before_local_midnight_of_to(
    zone: str, first: date, days: int
) -> None:
    tz = ZoneInfo(zone)
    last = first + timedelta(days=days)
    campaign = flight_campaign(first.isoformat(), last.isoformat())
    start, end = local_midnight(first, tz), local_midnight(last, tz)
    assert in_flight(campaign, tz, start)
    assert not in_flight(campaign, tz, start - 1)
    assert in_flight(campaign, tz, end - 1)
    assert not in_flight(campaign, tz, end)


# The daylight-saving days, with their UTC bounds worked out by hand.
DST_DAYS = [
    (LONDON, "2026-03-29", ms(2026, 3, 29, 0), ms(2026, 3, 29, 23)),  # 23 hours
    (LONDON, "2026-10-25", ms(2026, 10, 24, 23), ms(2026, 10, 26, 0)),  # 25 hours
    (NEW_YORK, "2026-03-08", ms(2026, 3, 8, 5), ms(2026, 3, 9, 4)),
    (NEW_YORK, "2026-11-01", ms(2026, 11, 1, 4), ms(2026, 11, 2, 5)),
]


@pytest.mark.parametrize(("tz", "day", "start", "end"), DST_DAYS)
@given(offset=st.integers(-3 * HOUR, 28 * HOUR))
def test_a_one_day_flight_on_a_daylight_saving_day_lasts_that_days_real_length(
    tz: ZoneInfo, day: str, start: int, end: int, offset: int
) -> None:
    following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    campaign = flight_campaign(day, following)
    at = start + offset
    assert in_flight(campaign, tz, at) == (start <= at < end)
    assert (local_date(at, tz).isoformat() == day) == (start <= at < end)


# Dayparts on those days: the local clock time of the instant decides.
DST_DAYPARTS = [
    # London springs 01:00 GMT -> 02:00 BST: 00:00-03:00 local is two real hours.
    (LONDON, "2026-03-29", "00:00", "03:00", ms(2026, 3, 29, 0), ms(2026, 3, 29, 2)),
    # ... and 01:00-02:00 never happens.
    (LONDON, "2026-03-29", "01:00", "02:00", 0, 0),
    # London falls 02:00 BST -> 01:00 GMT: 01:00-02:00 local happens twice.
    (LONDON, "2026-10-25", "01:00", "02:00", ms(2026, 10, 25, 0), ms(2026, 10, 25, 2)),
    (NEW_YORK, "2026-03-08", "01:00", "04:00", ms(2026, 3, 8, 6), ms(2026, 3, 8, 8)),
    (NEW_YORK, "2026-11-01", "01:00", "02:00", ms(2026, 11, 1, 5), ms(2026, 11, 1, 7)),
]


@pytest.mark.parametrize(("tz", "day", "frm", "to", "start", "end"), DST_DAYPARTS)
@given(offset=st.integers(-2 * HOUR, 30 * HOUR))
def test_a_daypart_on_a_daylight_saving_day_follows_the_local_clock(
    tz: ZoneInfo, day: str, frm: str, to: str, start: int, end: int, offset: int
) -> None:
    campaign = flight_campaign("2026-01-01", "2027-01-01", part("sun", frm, to))
    at = local_midnight(date.fromisoformat(day), tz) + offset
    assert in_flight(campaign, tz, at) == (start <= at < end)


MONDAY = ms(2026, 6, 15, 0)  # Monday 2026-06-15 00:00 UTC
minutes_in_week = st.integers(0, 7 * 24 * 60 - 1)


@given(minute=minutes_in_week, second=st.integers(0, 59_999))
def test_a_daypart_past_midnight_belongs_to_the_day_it_starts(minute: int, second: int) -> None:
    campaign = flight_campaign("2026-01-01", "2027-01-01", part("fri", "22:00", "02:00"))
    at = MONDAY + minute * 60_000 + second
    friday_22, saturday_02 = MONDAY + 4 * DAY + 22 * HOUR, MONDAY + 5 * DAY + 2 * HOUR
    assert in_flight(campaign, UTC_ZONE, at) == (friday_22 <= at < saturday_02)


@given(minute=minutes_in_week)
def test_a_sunday_night_daypart_runs_into_monday_morning(minute: int) -> None:
    campaign = flight_campaign("2026-01-01", "2027-01-01", part("sun", "23:30", "01:00"))
    at = MONDAY + minute * 60_000
    monday_early = at < MONDAY + HOUR
    sunday_late = at >= MONDAY + 6 * DAY + 23 * HOUR + 30 * 60_000
    assert in_flight(campaign, UTC_ZONE, at) == (monday_early or sunday_late)


@given(minute=minutes_in_week)
def test_a_daypart_includes_its_start_and_excludes_its_end(minute: int) -> None:
    parts = (part("mon-fri", "08:00", "22:00"), part("sat,sun", "10:00", "24:00"))
    campaign = flight_campaign("2026-01-01", "2027-01-01", *parts)
    day, clock = divmod(minute, 24 * 60)
    expected = 8 * 60 <= clock < 22 * 60 if day < 5 else clock >= 10 * 60
    assert in_flight(campaign, UTC_ZONE, MONDAY + minute * 60_000) == expected


def test_a_play_outside_the_flight_fails_with_outside_flight() -> None:
    campaign = flight_campaign("2026-07-01", "2026-08-01")
    assert decide(make_play(), campaign, SCREEN, History()).reasons == ("outside_flight",)


def test_the_flight_is_judged_in_the_stores_zone_not_utc() -> None:
    # 2026-06-30 23:30 UTC is already 2026-07-01 00:30 in London.
    campaign = flight_campaign("2026-07-01", "2026-08-01")
    at = ms(2026, 6, 30, 23, 30)
    assert in_flight(campaign, LONDON, at) and not in_flight(campaign, UTC_ZONE, at)


# --- targets, content, supplier, quality ------------------------------------------


def test_empty_targets_mean_every_screen() -> None:
    assert targeted(make_campaign(), "scr-1", None)


@pytest.mark.parametrize(
    ("stores", "devices", "device", "store", "expected"),
    [
        (["store-1"], [], "scr-1", "store-1", True),
        (["store-1"], [], "scr-1", "store-2", False),
        (["store-1"], [], "scr-1", None, False),
        ([], ["scr-1"], "scr-1", None, True),
        ([], ["scr-1"], "scr-2", "store-1", False),
        (["store-9"], ["scr-1"], "scr-1", "store-1", True),
        (["store-1"], ["scr-9"], "scr-1", "store-1", True),
    ],
)
def test_a_screen_is_targeted_by_its_own_id_or_its_registered_store(
    stores: list[str], devices: list[str], device: str, store: str | None, expected: bool
) -> None:
    campaign = make_campaign(targets=Targets(stores=stores, devices=devices))
    assert targeted(campaign, device, store) is expected


def test_the_registered_store_decides_targeting_not_the_records_claim() -> None:
    campaign = make_campaign(targets=Targets(stores=["store-1"]))
    elsewhere = Screen("store-2", UTC_ZONE)
    assert decide(make_play(), campaign, elsewhere, History()).reasons == ("not_targeted",)


@pytest.mark.parametrize(
    "changes", [{"ad_group_id": "ag-2"}, {"content_id": "cnt-2"}], ids=["group", "content"]
)
def test_content_or_ad_group_outside_the_campaign_fails(changes: dict[str, str]) -> None:
    decision = decide(make_play(**changes), make_campaign(), SCREEN, History())
    assert decision.reasons == ("content_not_in_campaign",)


def test_another_suppliers_play_fails_with_supplier_mismatch() -> None:
    decision = decide(make_play(supplier_id="sup-2"), make_campaign(), SCREEN, History())
    assert decision.reasons == ("supplier_mismatch",)


@given(minimum=st.integers(0, 100), quality=st.integers(0, 100))
def test_quality_below_the_campaigns_minimum_fails(minimum: int, quality: int) -> None:
    campaign = make_campaign(min_quality=minimum)
    decision = decide(make_play(quality=quality), campaign, SCREEN, History())
    assert ("low_quality" in decision.reasons) == (quality < minimum)


# --- cap ------------------------------------------------------------------------


@given(cap=st.integers(1, 10_000), verified_today=st.integers(0, 20_000))
def test_the_cap_fails_a_play_once_the_screen_had_that_many_verified_today(
    cap: int, verified_today: int
) -> None:
    campaign = make_campaign(cap=Cap(plays_per_screen_per_day=cap))
    decision = decide(make_play(), campaign, SCREEN, History(verified_today=verified_today))
    assert ("over_cap" in decision.reasons) == (verified_today >= cap)


def test_no_cap_means_no_over_cap() -> None:
    assert decide(make_play(), make_campaign(), SCREEN, History(verified_today=10**9)).verified


def test_the_local_day_of_a_play_is_the_stores() -> None:
    at = ms(2026, 6, 17, 3)  # 23:00 the day before in New York
    assert local_date(at, NEW_YORK) == date(2026, 6, 16)
    assert local_date(at, LONDON) == date(2026, 6, 17)


# --- screenshots ------------------------------------------------------------------


@given(k=st.integers(1, 10**8))
def test_screenshot_timing_boundaries_at_exactly_40_and_60_percent(k: int) -> None:
    expected = 5 * k  # 40 % is 2k and 60 % is 3k exactly
    assert screenshot_timing_ok(2 * k, expected) and screenshot_timing_ok(3 * k, expected)
    assert not screenshot_timing_ok(2 * k - 1, expected)
    assert not screenshot_timing_ok(3 * k + 1, expected)


@given(expected=st.integers(1, 86_400_000))
def test_screenshot_timing_uses_integer_arithmetic(expected: int) -> None:
    lowest = -(-40 * expected // 100)
    highest = 60 * expected // 100
    assert screenshot_timing_ok(lowest, expected) == (lowest <= highest)
    assert not screenshot_timing_ok(lowest - 1, expected)
    assert not screenshot_timing_ok(highest + 1, expected)


NEEDS_SHOT = make_campaign(require_screenshot=True)
GOOD_SHOT = ScreenshotFacts(present=True, blank=False, matches_reference=True)


def test_a_required_screenshot_the_record_does_not_name_is_missing_at_once() -> None:
    play = make_play()
    assert not must_wait(play, NEEDS_SHOT, False, play.received_at)
    assert decide(play, NEEDS_SHOT, SCREEN, History()).reasons == ("screenshot_missing",)


def test_a_named_screenshot_is_waited_for_until_the_grace_has_passed() -> None:
    play = make_play(screenshot_sha256=SHA, screenshot_at_ms=5_000)
    deadline = play.received_at + DEFAULT_GRACE_MS
    assert must_wait(play, NEEDS_SHOT, False, deadline - 1)
    assert not must_wait(play, NEEDS_SHOT, False, deadline)
    assert not must_wait(play, NEEDS_SHOT, True, deadline - 1)
    assert not must_wait(play, make_campaign(), False, deadline - 1)
    assert not must_wait(play, None, False, deadline - 1)
    assert not must_wait(play, NEEDS_SHOT, False, play.received_at + 10, grace_ms=10)
    missing = decide(play, NEEDS_SHOT, SCREEN, History(), ScreenshotFacts(present=False))
    assert missing.reasons == ("screenshot_missing",)


def test_an_uploaded_screenshot_taken_mid_play_and_like_the_reference_verifies() -> None:
    play = make_play(screenshot_sha256=SHA, screenshot_at_ms=5_000)
    assert decide(play, NEEDS_SHOT, SCREEN, History(), GOOD_SHOT).verified


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (GOOD_SHOT._replace(blank=True), "screenshot_blank"),
        (GOOD_SHOT._replace(matches_reference=False), "screenshot_mismatch"),
    ],
)
def test_a_blank_or_unlike_screenshot_fails(facts: ScreenshotFacts, reason: str) -> None:
    play = make_play(screenshot_sha256=SHA, screenshot_at_ms=5_000)
    assert decide(play, NEEDS_SHOT, SCREEN, History(), facts).reasons == (reason,)


def test_without_reference_images_a_screenshot_is_not_compared() -> None:
    play = make_play(screenshot_sha256=SHA, screenshot_at_ms=5_000)
    facts = GOOD_SHOT._replace(matches_reference=None)
    assert decide(play, NEEDS_SHOT, SCREEN, History(), facts).verified


@pytest.mark.parametrize("at", [None, 3_999, 6_001])
def test_a_named_screenshot_outside_40_to_60_percent_or_untimed_fails_timing(
    at: int | None,
) -> None:
    play = make_play(screenshot_sha256=SHA, screenshot_at_ms=at)
    decision = decide(play, make_campaign(), SCREEN, History(), GOOD_SHOT)
    assert decision.reasons == ("screenshot_timing",)


# --- every reason, order and unknown campaign -------------------------------------


def broken_play() -> tuple[Play, Campaign, History]:
    """A play that breaks every rule a present screenshot allows."""
    campaign = make_campaign(
        flight=Flight(from_="2025-01-01", to="2025-02-01"),
        targets=Targets(stores=["store-9"]),
        cap=Cap(plays_per_screen_per_day=1),
        require_screenshot=True,
        require_panel=True,
        min_quality=90,
    )
    play = make_play(
        panel_state="unknown",
        content_id="cnt-9",
        supplier_id="sup-9",
        quality=50,
        screenshot_sha256=SHA,
        screenshot_at_ms=9_000,
    )
    return play, campaign, History([(T0, T0 + 10_000)], verified_today=1)


def test_every_reason_that_applies_is_reported_in_the_tables_order() -> None:
    play, campaign, history = broken_play()
    facts = ScreenshotFacts(present=True, blank=True, matches_reference=False)
    decision = decide(play, campaign, SCREEN, history, facts)
    assert decision.status == "failed"
    assert decision.reasons == tuple(
        r for r in REASONS if r not in ("unknown_campaign", "screenshot_missing")
    )


def test_a_missing_screenshot_is_reported_with_the_other_reasons() -> None:
    play, campaign, history = broken_play()
    decision = decide(play, campaign, SCREEN, history, ScreenshotFacts(present=False))
    assert "screenshot_missing" in decision.reasons
    assert "screenshot_timing" in decision.reasons and "screenshot_blank" not in decision.reasons


def test_an_unknown_campaign_is_judged_on_nothing_about_the_campaign() -> None:
    play, _, history = broken_play()
    clean = decide(play, None, SCREEN, History(), ScreenshotFacts(present=True))
    assert clean == Decision("failed", ("unknown_campaign",))
    facts = ScreenshotFacts(present=True, blank=True, matches_reference=False)
    everything = decide(play, None, SCREEN, history, facts)
    assert everything.reasons == (
        "unknown_campaign",
        "overlap",
        "screenshot_blank",
        "screenshot_mismatch",
    )


@given(reasons=st.sets(st.sampled_from(REASONS)))
def test_a_decision_lists_its_reasons_in_table_order_and_fails_when_any(
    reasons: set[str],
) -> None:
    decision = Decision.of(reasons)
    assert list(decision.reasons) == sorted(reasons, key=REASONS.index)
    assert decision.verified == (not reasons)


def test_reasons_are_the_issues_table() -> None:
    assert REASONS == (
        "unknown_campaign",
        "outside_flight",
        "not_targeted",
        "content_not_in_campaign",
        "supplier_mismatch",
        "over_cap",
        "overlap",
        "screenshot_missing",
        "screenshot_timing",
        "screenshot_blank",
        "screenshot_mismatch",
        "low_quality",
        "panel_unknown",
    )


# --- panel evidence (protocol version 2) -------------------------------------------

PANEL_STATES = st.sampled_from([None, "on", "unknown"])


@given(panel_state=PANEL_STATES)
def test_a_campaign_without_require_panel_never_fails_for_the_panel(
    panel_state: str | None,
) -> None:
    play = make_play(panel_state=panel_state)
    assert decide(play, make_campaign(), SCREEN, History()) == Decision("verified", ())


@given(panel_state=PANEL_STATES)
def test_require_panel_fails_panel_unknown_exactly_when_the_record_shows_no_panel_state(
    panel_state: str | None,
) -> None:
    play = make_play(panel_state=panel_state)
    decision = decide(play, make_campaign(require_panel=True), SCREEN, History())
    # A version-1 record (None) carries no evidence; `unknown` says the device could not tell.
    expected = ("panel_unknown",) if panel_state in (None, "unknown") else ()
    assert decision.reasons == expected


def test_require_panel_defaults_to_false_and_is_strictly_a_boolean() -> None:
    doc = msgspec.json.encode(make_campaign())
    assert msgspec.json.decode(doc, type=Campaign).require_panel is False
    with pytest.raises(msgspec.ValidationError, match="require_panel"):
        msgspec.convert({**msgspec.to_builtins(make_campaign()), "require_panel": 1}, Campaign)


# --- the screen as the catalog knows it --------------------------------------------


def test_a_screen_takes_its_stores_zone_and_its_declared_zones() -> None:
    catalog = index(
        Catalog(
            stores=[StoreEntry(store_id="store-1", time_zone="Europe/London")],
            devices=[DeviceEntry(device_id="scr-1", zones=3)],
        )
    )
    assert screen_of(catalog, "scr-1", "store-1") == Screen("store-1", LONDON, 3)
    assert screen_of(catalog, "scr-2", "store-2") == Screen("store-2", FALLBACK_ZONE, 1)
    assert screen_of(catalog, "scr-2", None) == Screen(None, FALLBACK_ZONE, 1)
