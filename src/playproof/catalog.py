"""The catalog: what operators booked (suppliers, stores, devices, contents, campaigns).

One JSON document, decoded strictly and validated whole: every error is a
`CatalogError` naming the entry by its id and the field, so that an operator
can find the line to fix. Imports are merged (or replace the catalog) by
`catalog_merge.merge`, which reports every change so that past decisions stay
explainable.
Pure: no I/O; the stores keep the catalog and its history.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator, Sequence
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, NamedTuple, NoReturn, TypeVar

import msgspec

from playproof.errors import CatalogError
from playproof.protocol import ID_PATTERN

MAX_EXPECTED_MS: Final = 86_400_000
MAX_ZONES: Final = 100
MAX_PLAYER_REF: Final = 36
PRICE_MODELS: Final = ("per_play", "cpm")
# OpenRTB 2.6 `qty.sourcetype`: 0 unknown, 1 measurement vendor, 2 publisher, 3 exchange.
SOURCETYPE_VENDOR: Final = 1
SOURCETYPES: Final = (0, 1, 2, 3)
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# ISO 4217 active currencies and their minor units (digits after the point),
# for rounding billed totals; funds and precious metals are left out on purpose.
_TWO_DIGITS: Final = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP "
    "GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR "
    "MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR "
    "SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS "
    "UAH USD UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
_NO_DIGITS: Final = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DIGITS: Final = "BHD IQD JOD KWD LYD OMR TND"
MINOR_UNITS: Final[dict[str, int]] = {
    **dict.fromkeys(_TWO_DIGITS.split(), 2),
    **dict.fromkeys(_NO_DIGITS.split(), 0),
    **dict.fromkeys(_THREE_DIGITS.split(), 3),
    "UYW": 4,
}

_ID = re.compile(ID_PATTERN)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
# Plain decimal notation only: no sign, exponent, spaces or underscores, which
# Decimal() would take but a billing export should never see.
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_FRAME_ID = re.compile(r"[0-9]{10}")
# (kind in a Change, list field of Catalog, id field of the entry), in report order.
KINDS: Final = (
    ("supplier", "suppliers", "supplier_id"),
    ("store", "stores", "store_id"),
    ("device", "devices", "device_id"),
    ("content", "contents", "content_id"),
    ("campaign", "campaigns", "campaign_id"),
)
# For naming an entry by its id when translating msgspec's `$.campaigns[0]`.
_ID_KEYS: Final = {field: key for _, field, key in KINDS} | {"ad_groups": "ad_group_id"}

ExternalIds = dict[str, str]
_Path = tuple[str | int, ...]


class Supplier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who pays: a brand or advertiser, billed in `currency`."""

    supplier_id: str
    name: str = ""
    currency: str
    external_ids: ExternalIds = {}


class StoreEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A venue; its `time_zone` decides flight dates and dayparts of its screens."""

    store_id: str
    time_zone: str
    name: str = ""
    # OpenOOH venue taxonomy id (e.g. 203), passed through to buyers.
    venue_type: int | None = None


class DeviceEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A screen; `zones` is how many contents it may show at once."""

    device_id: str
    zones: int = 1
    external_ids: ExternalIds = {}


class Content(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A creative, and the images its screenshots are compared with."""

    content_id: str
    expected_ms: int
    name: str = ""
    reference_images: list[str] = []
    external_ids: ExternalIds = {}


class Daypart(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Days and local clock times; `from` > `to` runs past midnight."""

    days: str
    from_: str = msgspec.field(name="from")
    to: str


class Flight(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Local dates `from` (included) to `to` (excluded); no dayparts means all day."""

    from_: str = msgspec.field(name="from")
    to: str
    dayparts: list[Daypart] = []


class Targets(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Stores and devices a campaign runs on; both empty means every screen."""

    stores: list[str] = []
    devices: list[str] = []


class Cap(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Frequency cap: verified plays per screen per local day."""

    plays_per_screen_per_day: int


class AdGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A group of contents within a campaign."""

    ad_group_id: str
    contents: list[str] = []


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`per_play`, or `cpm` per thousand impressions; `amount` is an exact decimal string."""

    model: str
    amount: str
    currency: str

    def amount_decimal(self) -> Decimal:
        """The amount as an exact Decimal."""
        return Decimal(self.amount)


class ImpressionsPerPlay(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """OpenRTB 2.6 `qty`: audience per play and who measured it."""

    multiplier: str = "1"
    sourcetype: int = 0
    vendor: str | None = None

    def multiplier_decimal(self) -> Decimal:
        """The multiplier as an exact Decimal."""
        return Decimal(self.multiplier)


class Campaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What was sold: where, when, how often, which contents, at what price."""

    campaign_id: str
    supplier_id: str
    name: str = ""
    flight: Flight
    targets: Targets = Targets()
    cap: Cap | None = None
    ad_groups: list[AdGroup] = []
    require_screenshot: bool = False
    # Protocol version 2: only plays whose record shows the panel's state (not `unknown`,
    # not a version-1 record without any) are billable.
    require_panel: bool = False
    min_quality: int = 0
    price: Price
    impressions_per_play: ImpressionsPerPlay = ImpressionsPerPlay()
    external_ids: ExternalIds = {}

    def contents(self) -> frozenset[str]:
        """Every content id the campaign's ad groups name."""
        return frozenset(c for group in self.ad_groups for c in group.contents)


class Catalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole document."""

    suppliers: list[Supplier] = []
    stores: list[StoreEntry] = []
    devices: list[DeviceEntry] = []
    contents: list[Content] = []
    campaigns: list[Campaign] = []


class Change(NamedTuple):
    """One entry added, updated or retired by a merge; `before`/`after` are its JSON."""

    kind: str
    id: str
    action: str
    before: str | None
    after: str | None


class CatalogIndex(NamedTuple):
    """The catalog's entries by id, for lookups while deciding plays."""

    suppliers: dict[str, Supplier]
    stores: dict[str, StoreEntry]
    devices: dict[str, DeviceEntry]
    contents: dict[str, Content]
    campaigns: dict[str, Campaign]


Entry = Supplier | StoreEntry | DeviceEntry | Content | Campaign
_T = TypeVar("_T", Supplier, StoreEntry, DeviceEntry, Content, Campaign)


def ad_group_of(campaign: Campaign, ad_group_id: str) -> AdGroup | None:
    """The campaign's ad group with that id, or None."""
    return next((g for g in campaign.ad_groups if g.ad_group_id == ad_group_id), None)


def index(catalog: Catalog) -> CatalogIndex:
    """The catalog's entries by id."""
    return CatalogIndex(
        *({entry_id(e): e for e in getattr(catalog, field)} for _, field, _ in KINDS)
    )


def entry_id(entry: Entry) -> str:
    """An entry's id: its first field."""
    return str(getattr(entry, type(entry).__struct_fields__[0]))


# --- parsing ---------------------------------------------------------------


def parse_catalog(data: bytes) -> Catalog:
    """Decode and validate a catalog document, or raise CatalogError naming entry and field."""
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise CatalogError(f"catalog: expected a JSON document, got: {exc}") from None
    try:
        catalog = msgspec.convert(raw, Catalog)
    except msgspec.ValidationError as exc:
        raise CatalogError(_translate(str(exc), raw)) from None
    _check_line_breaks(raw)
    _check_catalog(catalog)
    return canonical(catalog)


def _translate(message: str, raw: Any) -> str:
    """msgspec's `Expected ... - at `$.campaigns[0].price`` in the catalog's own words."""
    text, _, path = message.partition(" - at `$")
    parts = _path_parts(path.rstrip("`"))
    missing = re.fullmatch(r"Object (missing required|contains unknown) field `(.+)`", text)
    if missing:
        parts.append(missing[2])
        text = "required field missing" if missing[1].startswith("missing") else "unknown field"
    return f"{_label(raw, parts)}: {text[:1].lower()}{text[1:]}"


def _path_parts(path: str) -> list[str | int | None]:
    """`.name` as str, `[0]` as int, and msgspec's `[...]` (some mapping key) as None."""
    parts: list[str | int | None] = []
    for name, item in re.findall(r"\.([^.\[]+)|\[([^\]]*)\]", path):
        parts.append(name if name else int(item) if item.isdigit() else None)
    return parts


def _label(raw: Any, parts: Sequence[str | int | None]) -> str:
    """`campaigns[cmp-100].flight.from` for the path (campaigns, 0, flight, from)."""
    label, node, parent = "", raw, ""
    for part in parts:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            label += f"[{_name_of(item, parent, part)}]"
            node = item
        elif part is None:
            # msgspec does not say which key of a mapping; external ids take only text.
            bad = (
                [k for k, v in node.items() if not isinstance(v, str)]
                if isinstance(node, dict)
                else []
            )
            label, node = f"{label}.{bad[0]}" if bad else f"{label}[...]", None
        else:
            label += f".{part}" if label else part
            node = node.get(part) if isinstance(node, dict) else None
            parent = part
    return label or "catalog"


def _name_of(item: Any, parent: str, position: int) -> str | int:
    key = _ID_KEYS.get(parent)
    value = item.get(key) if key and isinstance(item, dict) else None
    return value if isinstance(value, str) and _ID.fullmatch(value) else position


def _check_line_breaks(raw: Any) -> None:
    for parts, text in _strings(raw, ()):
        if "\r" in text or "\n" in text:
            _fail(_label(raw, parts), "text without line breaks", text)


def _strings(node: Any, parts: _Path) -> Iterator[tuple[_Path, str]]:
    if isinstance(node, str):
        yield parts, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield (*parts, key), key
            yield from _strings(value, (*parts, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, (*parts, i))


def _fail(at: str, expected: str, got: object) -> NoReturn:
    raise CatalogError(f"{at}: expected {expected}, got {got!r}")


# --- validation --------------------------------------------------------------


def _check_catalog(catalog: Catalog) -> None:
    for _, field, id_field in KINDS:
        entries = getattr(catalog, field)
        labels = _unique_ids(field, [getattr(e, id_field) for e in entries], id_field)
        for label, entry in zip(labels, entries, strict=True):
            _CHECKS[field](label, entry)
    currencies = {s.supplier_id: s.currency for s in catalog.suppliers}
    for campaign in catalog.campaigns:
        _check_currency_match(campaign, currencies)


def _unique_ids(kind: str, ids: Sequence[str], field: str = "") -> list[str]:
    """Labels `kind[id]` for entries (or a list of ids), once every id is valid and unique."""
    first: dict[str, int] = {}
    suffix = f".{field}" if field else ""
    for i, value in enumerate(ids):
        _check_id(f"{kind}[{i}]{suffix}", value)
        if value in first:
            _fail(f"{kind}[{i}]{suffix}", f"an id not already at {kind}[{first[value]}]", value)
        first[value] = i
    return [f"{kind}[{value}]" for value in ids]


def _check_id(at: str, value: str) -> None:
    if not _ID.fullmatch(value):
        _fail(at, "an id of 1 to 64 of A-Z a-z 0-9 . _ : -", value)


def _check_range(at: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        _fail(at, f"an integer from {low}" + (f" to {high}" if high is not None else " up"), value)


def _check_currency(at: str, code: str) -> None:
    if code not in MINOR_UNITS:
        _fail(at, "an ISO 4217 currency code such as 'EUR'", code)


def _check_decimal(at: str, text: str) -> None:
    if not _DECIMAL.fullmatch(text):
        _fail(at, "a decimal string such as '0.0125' (digits, optional point, no sign)", text)


def _check_supplier(at: str, supplier: Supplier) -> None:
    _check_currency(f"{at}.currency", supplier.currency)


def _check_store(at: str, store: StoreEntry) -> None:
    try:
        zoneinfo.ZoneInfo(store.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        _fail(f"{at}.time_zone", "an IANA time zone such as 'Europe/London'", store.time_zone)
    if store.venue_type is not None:
        _check_range(f"{at}.venue_type", store.venue_type, 0)


def _check_device(at: str, device: DeviceEntry) -> None:
    _check_range(f"{at}.zones", device.zones, 1, MAX_ZONES)
    frame_id = device.external_ids.get("frame_id")
    if frame_id is not None and not _FRAME_ID.fullmatch(frame_id):
        _fail(f"{at}.external_ids.frame_id", "a SPACE frame id of exactly 10 digits", frame_id)
    player_ref = device.external_ids.get("player_ref")
    if player_ref is not None and len(player_ref) > MAX_PLAYER_REF:
        _fail(f"{at}.external_ids.player_ref", f"at most {MAX_PLAYER_REF} characters", player_ref)


def _check_content(at: str, content: Content) -> None:
    _check_range(f"{at}.expected_ms", content.expected_ms, 1, MAX_EXPECTED_MS)
    for i, ref in enumerate(content.reference_images):
        if not ref:
            _fail(f"{at}.reference_images[{i}]", "a non-empty image name", ref)


def _check_campaign(at: str, campaign: Campaign) -> None:
    _check_id(f"{at}.supplier_id", campaign.supplier_id)
    _check_flight(f"{at}.flight", campaign.flight)
    _unique_ids(f"{at}.targets.stores", campaign.targets.stores)
    _unique_ids(f"{at}.targets.devices", campaign.targets.devices)
    if campaign.cap is not None:
        _check_range(f"{at}.cap.plays_per_screen_per_day", campaign.cap.plays_per_screen_per_day, 1)
    _check_ad_groups(f"{at}.ad_groups", campaign.ad_groups)
    _check_range(f"{at}.min_quality", campaign.min_quality, 0, 100)
    _check_price(f"{at}.price", campaign.price)
    _check_impressions(f"{at}.impressions_per_play", campaign.impressions_per_play)


def _check_ad_groups(at: str, groups: Sequence[AdGroup]) -> None:
    labels = _unique_ids(at, [g.ad_group_id for g in groups], "ad_group_id")
    for label, group in zip(labels, groups, strict=True):
        _unique_ids(f"{label}.contents", group.contents)


def _check_price(at: str, price: Price) -> None:
    if price.model not in PRICE_MODELS:
        _fail(f"{at}.model", "'per_play' or 'cpm'", price.model)
    _check_decimal(f"{at}.amount", price.amount)
    _check_currency(f"{at}.currency", price.currency)


def _check_impressions(at: str, qty: ImpressionsPerPlay) -> None:
    _check_decimal(f"{at}.multiplier", qty.multiplier)
    if qty.sourcetype not in SOURCETYPES:
        _fail(f"{at}.sourcetype", "0, 1, 2 or 3 (OpenRTB 2.6 qty.sourcetype)", qty.sourcetype)
    if qty.vendor == "" or (qty.sourcetype == SOURCETYPE_VENDOR and qty.vendor is None):
        _fail(f"{at}.vendor", "the measurement vendor's name when sourcetype is 1", qty.vendor)


def _check_currency_match(campaign: Campaign, currencies: dict[str, str]) -> None:
    expected = currencies.get(campaign.supplier_id)
    if expected is not None and campaign.price.currency != expected:
        _fail(
            f"campaigns[{campaign.campaign_id}].price.currency",
            f"the supplier {campaign.supplier_id}'s currency {expected!r}",
            campaign.price.currency,
        )


_CHECKS: Final[dict[str, Any]] = {
    "suppliers": _check_supplier,
    "stores": _check_store,
    "devices": _check_device,
    "contents": _check_content,
    "campaigns": _check_campaign,
}


# --- flights and dayparts ----------------------------------------------------


def _check_flight(at: str, flight: Flight) -> None:
    start = _check_date(f"{at}.from", flight.from_)
    end = _check_date(f"{at}.to", flight.to)
    if start >= end:
        _fail(f"{at}.to", f"a date after from ({flight.from_})", flight.to)
    for i, part in enumerate(flight.dayparts):
        _check_daypart(f"{at}.dayparts[{i}]", part)


def _check_date(at: str, text: str) -> date:
    try:
        if _DATE.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    _fail(at, "a date YYYY-MM-DD", text)


def _check_daypart(at: str, part: Daypart) -> None:
    try:
        weekdays(part.days)
    except ValueError as exc:
        _fail(f"{at}.days", f"days like 'mon-fri', 'sat,sun' or 'daily' ({exc})", part.days)
    if not _TIME.fullmatch(part.from_):
        _fail(f"{at}.from", "a local time HH:MM from 00:00 to 23:59", part.from_)
    if part.to != "24:00" and not _TIME.fullmatch(part.to):
        _fail(f"{at}.to", "a local time HH:MM from 00:00 to 24:00", part.to)
    if part.from_ == part.to:
        _fail(f"{at}.to", "a time other than from (use 00:00 to 24:00 for all day)", part.to)


@lru_cache(maxsize=1024)
def weekdays(days: str) -> frozenset[int]:
    """Weekday numbers (Monday 0) of a daypart's `days`, e.g. 'mon-fri,sun'; ValueError if bad."""
    if days.strip() == "daily":
        return frozenset(range(7))
    found: set[int] = set()
    for item in days.split(","):
        first, dash, last = item.strip().partition("-")
        start = _weekday(first)
        end = _weekday(last) if dash else start
        if dash and start == end:
            raise ValueError("a range needs two different days")
        found.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    return frozenset(found)


def _weekday(name: str) -> int:
    if name not in DAYS:
        raise ValueError(f"unknown day {name!r}")
    return DAYS.index(name)


@lru_cache(maxsize=1024)
def minute_of_day(hhmm: str) -> int:
    """Minutes since local midnight of `HH:MM` (24:00 is 1440)."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


# --- references ----------------------------------------------------------------


def check_references(catalog: Catalog) -> None:
    """Raise CatalogError when a campaign names a supplier, target or content not in the catalog."""
    known = index(catalog)
    for campaign in catalog.campaigns:
        at = f"campaigns[{campaign.campaign_id}]"
        supplier = known.suppliers.get(campaign.supplier_id)
        if supplier is None:
            _fail(f"{at}.supplier_id", "a supplier in the catalog", campaign.supplier_id)
        _check_currency_match(campaign, {supplier.supplier_id: supplier.currency})
        _check_known(f"{at}.targets.stores", campaign.targets.stores, known.stores, "store")
        _check_known(f"{at}.targets.devices", campaign.targets.devices, known.devices, "device")
        for group in campaign.ad_groups:
            where = f"{at}.ad_groups[{group.ad_group_id}].contents"
            _check_known(where, group.contents, known.contents, "content")


def _check_known(at: str, ids: Sequence[str], known: dict[str, Any], kind: str) -> None:
    for i, value in enumerate(ids):
        if value not in known:
            _fail(f"{at}[{i}]", f"a {kind} in the catalog", value)


# --- canonical form ------------------------------------------------------------


def canonical(catalog: Catalog) -> Catalog:
    """The same catalog with every id-keyed list sorted, so that equal catalogs compare equal."""
    return Catalog(
        suppliers=_sorted(catalog.suppliers),
        stores=_sorted(catalog.stores),
        devices=_sorted(catalog.devices),
        contents=_sorted(catalog.contents),
        campaigns=_sorted([canonical_campaign(c) for c in catalog.campaigns]),
    )


def _sorted(entries: Sequence[_T]) -> list[_T]:
    return sorted(entries, key=entry_id)


def canonical_campaign(campaign: Campaign) -> Campaign:
    """The campaign with its targets and ad groups sorted."""
    stores, devices = campaign.targets.stores, campaign.targets.devices
    targets = Targets(stores=sorted(stores), devices=sorted(devices))
    groups = [
        AdGroup(ad_group_id=g.ad_group_id, contents=sorted(g.contents))
        for g in sorted(campaign.ad_groups, key=lambda g: g.ad_group_id)
    ]
    return msgspec.structs.replace(campaign, targets=targets, ad_groups=groups)
