"""Buyer formats (pure, no I/O): a verified play as a DV360 ad play or a UK Playout record.

Each play is either rendered (its part of the file, and the "slot" where the
buyer files it) or refused with every reason that applies, so that a play that
cannot be exported is listed apart, never dropped and never sent with an empty
mandatory field. The stores keep what each export contained (`stores/export_ledger`);
the service streams it (`server/exports`).

- **DV360 Out-of-Home** (`sellers.adPlays.batchCreate`, API v1): each play is a
  `CreateAdPlayRequest` JSON object; request bodies hold at most 1000 of them.
  DV360 refuses a play that started more than 3 days before it is created, one
  not yet over, one whose end is not after its start, and answers
  `ALREADY_EXISTS` for a second play with the same ad unit, line, creative and
  start time: that key is the DV360 slot, and a second play on it is refused.
- **UK Playout (Outsmart) digital CSV**, file format 1.7 and field validation
  2.0 (github.com/Outsmart-OOH/PlayoutReportingStandard): 19 fields, no header,
  LF after every record. Playout rejects a play that started more than 14 days
  ago, one in the future, and one overlapping a play already filed on the same
  frame by more than 1.5 s: the frame id is the Playout slot.

Reason codes (a refused play carries every one that applies, in this order; the
ledger lists the plays of a history scan that are older than the window as
`outside_window` alone, without rendering them):
`future`, `outside_window`, `zero_length`, `unknown_store`,
`missing_external_id:<key>`, `missing_name`, `invalid_external_id:<key>`,
`too_long:<key>`, `padded:<key>`, `line_break:<key>`, then `duplicate` (DV360)
or `overlap` (Playout). `<key>` is the catalog's name for the value (an
`external_ids` key, or `name` for the content's name). A play refused only for
reasons that time or a catalog correction can lift is tried again by the next
incremental export; `outside_window`, `zero_length`, `duplicate` and `overlap`
are final.
"""

from __future__ import annotations

import hashlib
import re
import time
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

import msgspec

from playproof.catalog import Campaign, Catalog, Content, DeviceEntry, Supplier, index
from playproof.verification import OVERLAP, OVERLAP_TOLERANCE_MS

DV360: Final = "dv360"
PLAYOUT: Final = "playout"
BUYERS: Final = (DV360, PLAYOUT)
DAY_MS: Final = 86_400_000
# How long after its start a buyer still takes a play (start_ts at least created_at - window).
WINDOW_MS: Final = {DV360: 3 * DAY_MS, PLAYOUT: 14 * DAY_MS}
DV360_BATCH: Final = 1000
INT4_MAX: Final = 2_147_483_647

FUTURE: Final = "future"
OUTSIDE_WINDOW: Final = "outside_window"
ZERO_LENGTH: Final = "zero_length"
UNKNOWN_STORE: Final = "unknown_store"
MISSING_NAME: Final = "missing_name"
DUPLICATE: Final = "duplicate"
# Reasons no later export can lift: time only moves on, and a filed play is never unfiled.
FINAL_REASONS: Final = frozenset({OUTSIDE_WINDOW, ZERO_LENGTH, DUPLICATE, OVERLAP})

PLAYOUT_FIELDS: Final = (
    "frameid",
    "startdate",
    "startutcoffset",
    "enddate",
    "endutcoffset",
    "spotlength",
    "shareoftime",
    "orderid",
    "lineid",
    "spacebuyerid",
    "spaceagencyid",
    "spacebrandid",
    "buyercampaignref",
    "creativeid",
    "creativename",
    "thirdpartycreativeref",
    "creativetriggerevent",
    "playerref",
    "mediaownerplayoutref",
)
# TEXT fields' maximum lengths in characters (file format 1.7).
PLAYOUT_MAX: Final = {
    "orderid": 256,
    "lineid": 36,
    "buyercampaignref": 64,
    "creativeid": 64,
    "creativename": 128,
    "thirdpartycreativeref": 128,
    "creativetriggerevent": 64,
    "playerref": 36,
    "mediaownerplayoutref": 48,
}
# An INT4 as Playout validates it: a non-negative integer, written without leading zeros.
_INT4 = re.compile(r"0|[1-9][0-9]{0,9}")
_FRAME_ID = re.compile(r"[1-9][0-9]{9}")
_QUOTED = re.compile(r'[,"]')


def missing(key: str) -> str:
    """The reason for an external id the format needs and the catalog lacks."""
    return f"missing_external_id:{key}"


class ExportPlay(NamedTuple):
    """What an export needs of one verified play; `store_id` is the device's registered store."""

    device_id: str
    journal_id: str
    seq: int
    start_ts: int
    end_ts: int
    campaign_id: str
    content_id: str
    supplier_id: str
    store_id: str


class Rendered(NamedTuple):
    """A play's part of the file (a CSV record, or a CreateAdPlayRequest) and its slot."""

    record: str
    slot: str


class Refused(NamedTuple):
    """A play listed apart, with every reason that applies."""

    reasons: tuple[str, ...]

    @property
    def final(self) -> bool:
        """Whether no later export can take it (else the next one tries again)."""
        return any(r in FINAL_REASONS for r in self.reasons)

    @property
    def text(self) -> str:
        """The reasons as stored: comma-separated."""
        return ",".join(self.reasons)


Outcome = Rendered | Refused


class Books:
    """The catalog's entries an export looks up by id (retired campaigns too)."""

    def __init__(
        self, catalog: Catalog, retired: Mapping[str, tuple[Campaign, int]] | None = None
    ) -> None:
        found = index(catalog)
        self.devices: dict[str, DeviceEntry] = found.devices
        self.contents: dict[str, Content] = found.contents
        self.suppliers: dict[str, Supplier] = found.suppliers
        # A play verified before its campaign was retired is still the campaign's.
        older = {key: campaign for key, (campaign, _) in (retired or {}).items()}
        self.campaigns: dict[str, Campaign] = {**older, **found.campaigns}
        self.zones = {s.store_id: ZoneInfo(s.time_zone) for s in catalog.stores}
        # What the formats take of the catalog for one screen, campaign and content:
        # the same for all their plays, so worked out once per export.
        self.cache: dict[tuple[str, ...], Any] = {}

    def frame_of(self, device_id: str) -> str:
        """The device's SPACE frame id, or ''."""
        device = self.devices.get(device_id)
        return device.external_ids.get("frame_id", "") if device is not None else ""


# --- times ------------------------------------------------------------------------

_seconds: dict[int, str] = {}
_MILLIS: Final = tuple(f".{i:03d}" for i in range(1000))


def utc_text(ms: int) -> str:
    """Epoch milliseconds as UTC `yyyy-mm-ddThh:mm:ss.sss` (no zone suffix)."""
    second = ms // 1000
    prefix = _seconds.get(second)
    if prefix is None:
        # Exports format millions of times, most of them within a few seconds of another.
        if len(_seconds) > 200_000:
            _seconds.clear()
        prefix = _seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return prefix + _MILLIS[ms - second * 1000]


def rfc3339(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds, as DV360 takes them."""
    return utc_text(ms) + "Z"


_offsets: dict[tuple[ZoneInfo, int], str | None] = {}


def utc_offset(zone: ZoneInfo, ms: int) -> str:
    """The zone's offset from UTC at that instant as `±hh:mm` (daylight saving included)."""
    # Kept per zone and minute when the offset is the same at both ends of the minute
    # (None: it changes within it), so that a fleet's plays in one zone share the work.
    minute = ms // 60_000
    text = _offsets.get((zone, minute), "")
    if text == "":
        if len(_offsets) > 200_000:
            _offsets.clear()
        first, last = _offset_at(zone, minute * 60_000), _offset_at(zone, minute * 60_000 + 59_999)
        text = _offsets[(zone, minute)] = first if first == last else None
    return text if text is not None else _offset_at(zone, ms)


def _offset_at(zone: ZoneInfo, ms: int) -> str:
    offset = datetime.fromtimestamp(ms / 1000, zone).utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


def timing_reasons(buyer: str, play: ExportPlay, created_at: int) -> list[str]:
    """Why the buyer would refuse the play at `created_at` because of its times."""
    reasons = []
    if play.end_ts > created_at:
        reasons.append(FUTURE)
    if play.start_ts < created_at - WINDOW_MS[buyer]:
        reasons.append(OUTSIDE_WINDOW)
    if buyer == DV360 and play.end_ts <= play.start_ts:
        reasons.append(ZERO_LENGTH)
    return reasons


# --- field checks -------------------------------------------------------------------


class _Fields:
    """Values read from the catalog, each checked; `reasons` says what is wrong."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons

    def required(self, key: str, value: str) -> str:
        if not value:
            self.reasons.append(MISSING_NAME if key == "name" else missing(key))
        return value

    def text(self, key: str, value: str, limit: int | None, required: bool = False) -> str:
        """Catalog text as a TEXT field: present if required, short enough, unpadded."""
        if required and not self.required(key, value):
            return value
        if limit is not None and len(value) > limit:
            self.reasons.append(f"too_long:{key}")
        if value != value.strip():
            self.reasons.append(f"padded:{key}")
        if "\n" in value or "\r" in value:
            self.reasons.append(f"line_break:{key}")
        return value

    def frame_id(self, value: str) -> str:
        """A SPACE frame id: exactly 10 digits, and an INT4."""
        if self.required("frame_id", value) and (
            not _FRAME_ID.fullmatch(value) or int(value) > INT4_MAX
        ):
            self.reasons.append("invalid_external_id:frame_id")
        return value

    def int4(self, key: str, value: str, required: bool = False) -> str:
        """A SPACE id as an INT4 field: digits without leading zeros, at most 2147483647."""
        if (required and not self.required(key, value)) or not value:
            return value
        if not _INT4.fullmatch(value) or int(value) > INT4_MAX:
            self.reasons.append(f"invalid_external_id:{key}")
        return value


def _ids(entry: DeviceEntry | Content | Campaign | Supplier | None) -> Mapping[str, str]:
    return entry.external_ids if entry is not None else {}


# --- DV360 --------------------------------------------------------------------------


class AdPlay(msgspec.Struct, rename="camel"):
    """DV360's AdPlay as created with external ids (field order as documented)."""

    start_time: str
    end_time: str
    impression_count: Decimal
    line_external_id: str
    ad_unit_external_id: str
    creative_asset_external_id: str


class CreateAdPlayRequest(msgspec.Struct, rename="camel"):
    """One element of a batchCreate body's `requests`."""

    parent: str
    ad_play: AdPlay


# A fractional impression count is written as the exact decimal the catalog holds.
_dv360_encoder = msgspec.json.Encoder(decimal_format="number")


def dv360_record(play: ExportPlay, books: Books, seller_id: str) -> Rendered | list[str]:
    """The play as a CreateAdPlayRequest, or why not (beside its timing)."""
    reasons: list[str] = []
    fields = _Fields(reasons)
    campaign = books.campaigns.get(play.campaign_id)
    device, content = books.devices.get(play.device_id), books.contents.get(play.content_id)
    line = fields.required("line", _ids(campaign).get("line", ""))
    ad_unit = fields.required("ad_unit", _ids(device).get("ad_unit", ""))
    creative = fields.required("creative", _ids(content).get("creative", ""))
    if reasons or campaign is None:
        return reasons
    count = campaign.impressions_per_play.multiplier_decimal()
    ad_play = AdPlay(rfc3339(play.start_ts), rfc3339(play.end_ts), count, line, ad_unit, creative)
    record = _dv360_encoder.encode(CreateAdPlayRequest(f"sellers/{seller_id}", ad_play)).decode()
    # DV360's uniqueness key: ad unit, line (which implies the order), creative, start time.
    slot = _dv360_encoder.encode([ad_unit, line, creative, play.start_ts]).decode()
    return Rendered(record, slot)


def dv360_body(records: Sequence[str]) -> bytes:
    """One batchCreate request body (at most DV360_BATCH records) and a line feed."""
    if len(records) > DV360_BATCH:
        raise ValueError(f"expected at most {DV360_BATCH} ad plays a request, got {len(records)}")
    return ('{"requests":[' + ",".join(records) + "]}\n").encode()


# --- UK Playout ---------------------------------------------------------------------


def playout_ref(play: ExportPlay) -> str:
    """`mediaownerplayoutref`: the first 32 hex digits of SHA-256 of `device/journal/seq`."""
    key = f"{play.device_id}/{play.journal_id}/{play.seq}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def csv_field(value: str) -> str:
    """A TEXT value as Playout reads it: quoted (quotes doubled) when it holds `,` or `"`."""
    if _QUOTED.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


class _Booked(NamedTuple):
    """What the catalog gives a screen's plays of a campaign's content, checked and quoted."""

    frame: str
    zone: ZoneInfo | None
    middle: str  # `,shareoftime,...,creativetriggerevent,playerref,` as written
    reasons: tuple[str, ...]


def playout_record(play: ExportPlay, books: Books) -> Rendered | list[str]:
    """The play as a Playout digital record (a CSV line), or why not (beside its timing)."""
    key = (play.device_id, play.campaign_id, play.content_id, play.supplier_id, play.store_id)
    booked = books.cache.get(key)
    if booked is None:
        booked = books.cache[key] = _booked(play, books)
    if booked.reasons or booked.zone is None:
        return list(booked.reasons)
    zone, start, end = booked.zone, play.start_ts, play.end_ts
    return Rendered(
        f"{booked.frame},{utc_text(start)},{utc_offset(zone, start)},{utc_text(end)},"
        f"{utc_offset(zone, end)},{end - start}{booked.middle}{playout_ref(play)}\n",
        booked.frame,
    )


def _booked(play: ExportPlay, books: Books) -> _Booked:
    reasons: list[str] = []
    fields = _Fields(reasons)
    device = _ids(books.devices.get(play.device_id))
    frame = fields.frame_id(device.get("frame_id", ""))
    zone = books.zones.get(play.store_id)
    if zone is None:
        reasons.append(UNKNOWN_STORE)
    values = _booked_fields(fields, play, books)
    values.append(fields.text("player_ref", device.get("player_ref", ""), PLAYOUT_MAX["playerref"]))
    # shareoftime is for scrollers only: a screen shows one spot at a time.
    middle = ",," + ",".join(csv_field(v) for v in values) + ","
    return _Booked(frame, zone, middle, tuple(reasons))


def _booked_fields(fields: _Fields, play: ExportPlay, books: Books) -> list[str]:
    """`orderid` to `creativetriggerevent`: what the campaign, supplier and content say."""
    campaign_entry = books.campaigns.get(play.campaign_id)
    campaign = _ids(campaign_entry)
    supplier_id = campaign_entry.supplier_id if campaign_entry is not None else play.supplier_id
    brand = _ids(books.suppliers.get(supplier_id)).get("spacebrandid", "")
    content_entry = books.contents.get(play.content_id)
    content = _ids(content_entry)
    name = content_entry.name if content_entry is not None else ""
    most = PLAYOUT_MAX
    return [
        fields.text("order", campaign.get("order", ""), most["orderid"], required=True),
        fields.text("line", campaign.get("line", ""), most["lineid"]),
        fields.int4("spacebuyerid", campaign.get("spacebuyerid", ""), required=True),
        fields.int4("spaceagencyid", campaign.get("spaceagencyid", "")),
        fields.int4("spacebrandid", brand, required=True),
        fields.text(
            "buyercampaignref",
            campaign.get("buyercampaignref", ""),
            most["buyercampaignref"],
        ),
        fields.text("creative", content.get("creative", ""), most["creativeid"], required=True),
        fields.text("name", name, most["creativename"], required=True),
        fields.text(
            "thirdpartycreativeref",
            content.get("thirdpartycreativeref", ""),
            most["thirdpartycreativeref"],
        ),
        "",  # creativetriggerevent: playproof records no trigger
    ]


# --- overlaps on a frame ----------------------------------------------------------------


class Frames:
    """Plays kept per frame: a play may overlap none of them by more than 1.5 s.

    Plays are offered in start order; those filed before (in earlier exports)
    are loaded first, whatever their start. A play's overlap with a kept one is
    at most the kept one's length, so only kept plays starting within the
    longest kept length before it are looked at (and older ones are dropped).
    """

    def __init__(self) -> None:
        self._kept: dict[str, list[tuple[int, int]]] = {}
        self._longest: dict[str, int] = {}

    def load(self, filed: Iterable[tuple[str, int, int]]) -> None:
        """Plays filed before on their frames: (frame, start_ts, end_ts)."""
        touched = set()
        for frame, start, end in filed:
            self._kept.setdefault(frame, []).append((start, end))
            self._longest[frame] = max(self._longest.get(frame, 0), end - start)
            touched.add(frame)
        for frame in touched:
            self._kept[frame].sort()

    def admit(self, frame: str, start: int, end: int) -> bool:
        """Keep the play and say True, unless it overlaps a kept one by more than 1.5 s."""
        kept = self._kept.get(frame)
        if kept:
            floor = start - self._longest[frame]
            stale = bisect_left(kept, (floor,))
            if stale > 64:
                del kept[:stale]  # starts too early to reach this play or any later one
            for j in range(bisect_left(kept, (end - OVERLAP_TOLERANCE_MS,)) - 1, -1, -1):
                kept_start, kept_end = kept[j]
                if kept_start < floor:
                    break
                if min(kept_end, end) - max(kept_start, start) > OVERLAP_TOLERANCE_MS:
                    return False
        self._keep(frame, start, end)
        return True

    def _keep(self, frame: str, start: int, end: int) -> None:
        insort(self._kept.setdefault(frame, []), (start, end))
        self._longest[frame] = max(self._longest.get(frame, 0), end - start)


# --- one export's decisions -----------------------------------------------------------


class Classifier:
    """Decides, play by play in export order, what one export contains and lists apart."""

    def __init__(self, buyer: str, books: Books, created_at: int, seller_id: str = "") -> None:
        if buyer not in BUYERS:
            raise ValueError(f"expected a buyer among {', '.join(BUYERS)}, got {buyer!r}")
        self.buyer = buyer
        self.books = books
        self.created_at = created_at
        self.seller_id = seller_id
        self.frames = Frames()
        self._start: int | None = None
        self._slots: set[str] = set()

    def render(self, play: ExportPlay) -> Outcome:
        """The play rendered, or refused for its times and catalog values."""
        reasons = timing_reasons(self.buyer, play, self.created_at)
        if self.buyer == DV360:
            found = dv360_record(play, self.books, self.seller_id)
        else:
            found = playout_record(play, self.books)
        if isinstance(found, Rendered) and not reasons:
            return found
        return Refused(tuple(reasons + ([] if isinstance(found, Rendered) else found)))

    def admit(self, play: ExportPlay, rendered: Rendered, filed_before: bool = False) -> Outcome:
        """A rendered play, unless its slot is taken; call in export order.

        `filed_before`: DV360 already holds a play on this slot (an earlier export).
        """
        if self.buyer == PLAYOUT:
            free = self.frames.admit(rendered.slot, play.start_ts, play.end_ts)
            return rendered if free else Refused((OVERLAP,))
        if play.start_ts != self._start:
            # A DV360 slot holds the start time: plays sharing one are next to each other.
            self._start, self._slots = play.start_ts, set()
        if filed_before or rendered.slot in self._slots:
            return Refused((DUPLICATE,))
        self._slots.add(rendered.slot)
        return rendered
