"""Pure verification decisions (no I/O): can a valid play be billed, and every reason why not.

A verifier worker loads what a decision needs (the play, its campaign, the
screen's registered store and zones, the plays decided before it on that
screen, the screenshot's facts) and calls `decide`. Everything here is a
function of those inputs, so that any number of verifiers deciding the same
screen in stored order come out the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from functools import lru_cache
from typing import Final, NamedTuple
from zoneinfo import ZoneInfo

from playproof.catalog import (
    Campaign,
    Catalog,
    CatalogIndex,
    Change,
    Daypart,
    ad_group_of,
    minute_of_day,
    weekdays,
)
from playproof.imaging import DEFAULT_MATCH_THRESHOLD, hash_distance
from playproof.rules import HOUR_MS

UNKNOWN_CAMPAIGN: Final = "unknown_campaign"
OUTSIDE_FLIGHT: Final = "outside_flight"
NOT_TARGETED: Final = "not_targeted"
CONTENT_NOT_IN_CAMPAIGN: Final = "content_not_in_campaign"
SUPPLIER_MISMATCH: Final = "supplier_mismatch"
OVER_CAP: Final = "over_cap"
OVERLAP: Final = "overlap"
SCREENSHOT_MISSING: Final = "screenshot_missing"
SCREENSHOT_TIMING: Final = "screenshot_timing"
SCREENSHOT_BLANK: Final = "screenshot_blank"
SCREENSHOT_MISMATCH: Final = "screenshot_mismatch"
LOW_QUALITY: Final = "low_quality"
# Protocol version 2: the campaign requires panel evidence (`require_panel`) and the play
# has none (its record says `unknown`, or is version 1 and says nothing).
PANEL_UNKNOWN: Final = "panel_unknown"
# The table order: reasons are always reported in this order.
REASONS: Final = (
    UNKNOWN_CAMPAIGN,
    OUTSIDE_FLIGHT,
    NOT_TARGETED,
    CONTENT_NOT_IN_CAMPAIGN,
    SUPPLIER_MISMATCH,
    OVER_CAP,
    OVERLAP,
    SCREENSHOT_MISSING,
    SCREENSHOT_TIMING,
    SCREENSHOT_BLANK,
    SCREENSHOT_MISMATCH,
    LOW_QUALITY,
    PANEL_UNKNOWN,
)
VERIFIED: Final = "verified"
FAILED: Final = "failed"

# The UK Playout rule: two plays on one screen may overlap by up to 1.5 s.
OVERLAP_TOLERANCE_MS: Final = 1500
# How long a required screenshot named by a record may take to be uploaded.
DEFAULT_GRACE_MS: Final = HOUR_MS
# Screenshot between 40 % and 60 % of the expected duration, as integer percentages.
SCREENSHOT_FROM_PERCENT: Final = 40
SCREENSHOT_TO_PERCENT: Final = 60
# A screen whose registered store is unknown to the catalog is judged in UTC.
FALLBACK_ZONE: Final = ZoneInfo("UTC")


class Play(NamedTuple):
    """What a decision needs of one stored valid impression."""

    device_id: str
    journal_id: str
    seq: int
    campaign_id: str
    ad_group_id: str
    content_id: str
    supplier_id: str
    start_ts: int
    end_ts: int
    expected_ms: int
    quality: int
    screenshot_sha256: str | None
    screenshot_at_ms: int | None
    received_at: int
    # The store the record names (rollups count by it; decisions use the registered one).
    store_id: str = ""
    # What the device saw of its panel (protocol version 2); None for a version-1 record.
    # A valid play's panel was never seen off (that makes a play `partial`).
    panel_state: str | None = None


class Screen(NamedTuple):
    """The screen that played: its registered store, that store's zone, and its zones."""

    registered_store_id: str | None
    zone: ZoneInfo
    zones: int = 1


class History(NamedTuple):
    """What was decided before this play on its screen, in stored order.

    `earlier_kept` are the intervals `(start_ts, end_ts)` of the valid plays
    stored before it that did not themselves fail for `overlap` (the play
    stored first keeps its place); `verified_today` counts the campaign's
    verified plays on this screen on the play's local day.
    """

    earlier_kept: Sequence[tuple[int, int]] = ()
    verified_today: int = 0


class ScreenshotFacts(NamedTuple):
    """The named screenshot: uploaded? blank? like a reference (None: no references)?"""

    present: bool = False
    blank: bool = False
    matches_reference: bool | None = None


NO_SCREENSHOT: Final = ScreenshotFacts()


class Decision(NamedTuple):
    """`verified` or `failed`, with every reason that applies in REASONS order."""

    status: str
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, reasons: set[str]) -> Decision:
        """The decision for a set of reasons: verified when there are none."""
        ordered = tuple(r for r in REASONS if r in reasons)
        return cls(FAILED if ordered else VERIFIED, ordered)

    @property
    def verified(self) -> bool:
        """Whether the play can be billed."""
        return self.status == VERIFIED


# --- local time ------------------------------------------------------------------


def local_time(ts_ms: int, tz: ZoneInfo) -> datetime:
    """The wall-clock time in `tz` of an instant in epoch milliseconds (to the second)."""
    # Flooring to the second never crosses a minute, so minute-level rules stay exact.
    return datetime.fromtimestamp(ts_ms // 1000, tz)


def local_date(ts_ms: int, tz: ZoneInfo) -> date:
    """The date in `tz` of an instant in epoch milliseconds."""
    return local_time(ts_ms, tz).date()


_date: Final = lru_cache(maxsize=4096)(date.fromisoformat)


def in_flight(campaign: Campaign, tz: ZoneInfo, start_ts: int) -> bool:
    """Whether a play starting at `start_ts` is within the flight's local dates and dayparts.

    The flight is judged on the local date of the start itself; a daypart that
    runs past midnight belongs to the weekday it starts on.
    """
    local = local_time(start_ts, tz)
    flight = campaign.flight
    if not _date(flight.from_) <= local.date() < _date(flight.to):
        return False
    return not flight.dayparts or any(in_daypart(part, local) for part in flight.dayparts)


def in_daypart(part: Daypart, local: datetime) -> bool:
    """Whether a local wall-clock time is within a daypart (`from` included, `to` excluded)."""
    days = weekdays(part.days)
    start, end = minute_of_day(part.from_), minute_of_day(part.to)
    minute, day = local.hour * 60 + local.minute, local.weekday()
    if start < end:
        return day in days and start <= minute < end
    return (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end)


# --- single rules ----------------------------------------------------------------


def targeted(campaign: Campaign, device_id: str, registered_store_id: str | None) -> bool:
    """Whether the screen, or the store it is registered to, is among the campaign's targets."""
    stores, devices = campaign.targets.stores, campaign.targets.devices
    if not stores and not devices:
        return True
    return device_id in devices or (
        registered_store_id is not None and registered_store_id in stores
    )


def content_in_campaign(campaign: Campaign, ad_group_id: str, content_id: str) -> bool:
    """Whether the ad group is the campaign's and names the content."""
    group = ad_group_of(campaign, ad_group_id)
    return group is not None and content_id in group.contents


def screenshot_timing_ok(at_ms: int, expected_ms: int) -> bool:
    """Whether a screenshot at `at_ms` falls within 40-60 % of `expected_ms`, inclusive."""
    scaled = at_ms * 100
    return SCREENSHOT_FROM_PERCENT * expected_ms <= scaled <= SCREENSHOT_TO_PERCENT * expected_ms


def panel_seen(panel_state: str | None) -> bool:
    """Whether a record carries evidence of the panel's state: version 2, and not `unknown`.

    A version-1 record (None) carries none, so a campaign that requires it cannot bill it.
    """
    return panel_state is not None and panel_state != "unknown"


def overlaps(play: tuple[int, int], other: tuple[int, int]) -> int:
    """How many milliseconds two intervals `(start, end)` share (0 when apart)."""
    return max(0, min(play[1], other[1]) - max(play[0], other[0]))


def overlap_fails(start: int, end: int, earlier: Sequence[tuple[int, int]], zones: int) -> bool:
    """Whether at least `zones` earlier kept plays overlap [start, end) by more than 1.5 s."""
    over = sum(1 for other in earlier if overlaps((start, end), other) > OVERLAP_TOLERANCE_MS)
    return over >= zones


def over_cap(campaign: Campaign, verified_today: int) -> bool:
    """Whether the screen already had the campaign's capped number of verified plays today."""
    cap = campaign.cap
    return cap is not None and verified_today >= cap.plays_per_screen_per_day


def must_wait(
    play: Play,
    campaign: Campaign | None,
    screenshot_present: bool,
    now_ms: int,
    grace_ms: int = DEFAULT_GRACE_MS,
) -> bool:
    """Whether the play waits for its required, named, not yet uploaded screenshot."""
    return (
        campaign is not None
        and campaign.require_screenshot
        and play.screenshot_sha256 is not None
        and not screenshot_present
        and now_ms < play.received_at + grace_ms
    )


# --- the decision ----------------------------------------------------------------


def screen_of(catalog: CatalogIndex, device_id: str, registered_store_id: str | None) -> Screen:
    """The screen as the catalog knows it: its store's zone (UTC if unknown) and its zones."""
    store = catalog.stores.get(registered_store_id) if registered_store_id else None
    device = catalog.devices.get(device_id)
    zone = ZoneInfo(store.time_zone) if store is not None else FALLBACK_ZONE
    return Screen(registered_store_id, zone, device.zones if device is not None else 1)


def decide(
    play: Play,
    campaign: Campaign | None,
    screen: Screen,
    history: History,
    screenshot: ScreenshotFacts = NO_SCREENSHOT,
) -> Decision:
    """Verify a play, reporting every reason that applies.

    Call it only once `must_wait` is False: a required screenshot that is
    named but absent then counts as missing. An unknown campaign is judged
    on nothing about the campaign; only the screen's overlap and the
    screenshot's own image are judged besides.
    """
    reasons: set[str] = set()
    if campaign is None:
        reasons.add(UNKNOWN_CAMPAIGN)
    else:
        reasons.update(_campaign_reasons(play, campaign, screen, history))
        reasons.update(_screenshot_reasons(play, campaign, screenshot))
    if overlap_fails(play.start_ts, play.end_ts, history.earlier_kept, screen.zones):
        reasons.add(OVERLAP)
    reasons.update(_image_reasons(play, screenshot))
    return Decision.of(reasons)


def _campaign_reasons(
    play: Play, campaign: Campaign, screen: Screen, history: History
) -> Iterator[str]:
    if not in_flight(campaign, screen.zone, play.start_ts):
        yield OUTSIDE_FLIGHT
    if not targeted(campaign, play.device_id, screen.registered_store_id):
        yield NOT_TARGETED
    if not content_in_campaign(campaign, play.ad_group_id, play.content_id):
        yield CONTENT_NOT_IN_CAMPAIGN
    if play.supplier_id != campaign.supplier_id:
        yield SUPPLIER_MISMATCH
    if over_cap(campaign, history.verified_today):
        yield OVER_CAP
    if play.quality < campaign.min_quality:
        yield LOW_QUALITY
    if campaign.require_panel and not panel_seen(play.panel_state):
        yield PANEL_UNKNOWN


def _screenshot_reasons(play: Play, campaign: Campaign, shot: ScreenshotFacts) -> Iterator[str]:
    named = play.screenshot_sha256 is not None
    if campaign.require_screenshot and not (named and shot.present):
        yield SCREENSHOT_MISSING
    # A named screenshot is evidence whether or not the campaign asked for it;
    # one without a time cannot show it was taken mid-play.
    at = play.screenshot_at_ms
    if named and (at is None or not screenshot_timing_ok(at, play.expected_ms)):
        yield SCREENSHOT_TIMING


def _image_reasons(play: Play, shot: ScreenshotFacts) -> Iterator[str]:
    if play.screenshot_sha256 is None or not shot.present:
        return
    if shot.blank:
        yield SCREENSHOT_BLANK
    if shot.matches_reference is False:
        yield SCREENSHOT_MISMATCH


# --- a screen's pending plays, in stored order -------------------------------------


class Decided(NamedTuple):
    """A valid play already decided on the screen (near the pending ones in time)."""

    start_ts: int
    end_ts: int
    campaign_id: str
    status: str
    reasons: tuple[str, ...]


class Shot(NamedTuple):
    """An uploaded screenshot as the verifier saw it: its hash (None: not an image), blank?"""

    phash: str | None
    blank: bool


class ScreenState(NamedTuple):
    """One screen's pending plays (stored order) and what a decision needs around them."""

    device_id: str
    registered_store_id: str | None
    pending: Sequence[Play]
    decided: Sequence[Decided]
    # Uploaded screenshots named by the pending plays, with their facts.
    shots: Mapping[str, Shot]


class Booked(NamedTuple):
    """The catalog as a verifier uses it: active entries, and when retired campaigns retired."""

    entries: CatalogIndex
    retired: Mapping[str, tuple[Campaign, int]]
    # Perceptual hashes of each content's reference images.
    references: Mapping[str, Sequence[str]]

    def campaign(self, campaign_id: str, start_ts: int) -> Campaign | None:
        """The campaign a play belongs to; a retired one only for plays before it retired."""
        active = self.entries.campaigns.get(campaign_id)
        if active is not None:
            return active
        retired = self.retired.get(campaign_id)
        return retired[0] if retired is not None and start_ts < retired[1] else None


def decide_screen(
    state: ScreenState,
    booked: Booked,
    now_ms: int,
    grace_ms: int = DEFAULT_GRACE_MS,
    threshold: int = DEFAULT_MATCH_THRESHOLD,
) -> list[tuple[Play, Decision]]:
    """Decide a screen's pending plays one after another, in stored order.

    Each decision sees the ones before it (overlap, cap). The first play still
    waiting for its screenshot stops the run: the plays stored after it wait too.
    """
    screen = screen_of(booked.entries, state.device_id, state.registered_store_id)
    kept = [(d.start_ts, d.end_ts) for d in state.decided if OVERLAP not in d.reasons]
    verified = [(d.campaign_id, d.start_ts) for d in state.decided if d.status == VERIFIED]
    out: list[tuple[Play, Decision]] = []
    for play in state.pending:
        campaign = booked.campaign(play.campaign_id, play.start_ts)
        shot = state.shots.get(play.screenshot_sha256 or "")
        if must_wait(play, campaign, shot is not None, now_ms, grace_ms):
            break
        today = _same_local_day(play, verified, screen.zone)
        facts = _facts(play, shot, booked.references, threshold)
        decision = decide(play, campaign, screen, History(kept, today), facts)
        out.append((play, decision))
        if OVERLAP not in decision.reasons:
            kept.append((play.start_ts, play.end_ts))
        if decision.verified:
            verified.append((play.campaign_id, play.start_ts))
    return out


def _same_local_day(play: Play, verified: Sequence[tuple[str, int]], zone: ZoneInfo) -> int:
    day = local_date(play.start_ts, zone)
    return sum(
        1 for c, start in verified if c == play.campaign_id and local_date(start, zone) == day
    )


def _facts(
    play: Play, shot: Shot | None, references: Mapping[str, Sequence[str]], threshold: int
) -> ScreenshotFacts:
    if shot is None:
        return NO_SCREENSHOT
    refs = references.get(play.content_id, ())
    if shot.phash is None:
        # Uploaded but not an image we can read: nothing of it can be shown.
        return ScreenshotFacts(present=True, blank=True, matches_reference=False if refs else None)
    matched = any(hash_distance(shot.phash, r) <= threshold for r in refs) if refs else None
    return ScreenshotFacts(present=True, blank=shot.blank, matches_reference=matched)


# --- what a catalog change makes decided again ------------------------------------


class Affected(NamedTuple):
    """Decided plays a catalog change may decide differently: by campaign, device or store."""

    campaigns: frozenset[str]
    devices: frozenset[str]
    stores: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.campaigns or self.devices or self.stores)


def affected(changes: Sequence[Change], before: Catalog, after: Catalog) -> Affected:
    """What the changes touch. Retiring an entry touches nothing: decided plays keep their history.

    A content or supplier change reaches the campaigns (before or after) that use it.
    """
    campaigns: set[str] = set()
    devices: set[str] = set()
    stores: set[str] = set()
    both = [*before.campaigns, *after.campaigns]
    for change in changes:
        if change.action == "retired":
            continue
        if change.kind == "campaign":
            campaigns.add(change.id)
        elif change.kind == "content":
            campaigns.update(c.campaign_id for c in both if change.id in c.contents())
        elif change.kind == "supplier":
            campaigns.update(c.campaign_id for c in both if c.supplier_id == change.id)
        elif change.kind == "device":
            devices.add(change.id)
        elif change.kind == "store":
            stores.add(change.id)
    return Affected(frozenset(campaigns), frozenset(devices), frozenset(stores))
