"""What the simulated fleet was booked for: a catalog that matches its plan, and its import.

Every screen's store, every campaign, ad group and content its playlists use,
every supplier, with what billing will need of them: currencies (EUR, and one
supplier in GBP), store time zones (mostly Europe/London, some Europe/Berlin,
one Asia/Kathmandu), SPACE frame ids, ad units, player references, creative
ids, prices per play and per thousand with their audience multipliers, and the
buyers' order, line and SPACE ids. Flights cover the run on the service's
clock with days to spare on either side. Every content has a reference image
(`pictures.picture`), which is what the fleet's capturing screens show.

The catalog is imported through the service (`PUT /v1/catalog`, then
`PUT /v1/contents/<id>/reference`) with an operator token before the screens
start, and written to the devices folder (`catalog.json`, `references/`) so
that `playproof catalog import` can read it too. With the fleet's `breaks`
(the demo), two campaigns are booked wrong on purpose: one for a single store
(its plays elsewhere fail `not_targeted`), and one left out of the first import
and imported part-way through the run (its plays fail `unknown_campaign`, then
are decided again and verified).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx

from playproof.errors import ConfigError
from playproof.fleet.pictures import picture
from playproof.fleet.plan import (
    AD_GROUPS,
    BANNER_MS,
    CAMPAIGNS,
    CONTENTS,
    SUPPLIERS,
    FleetOptions,
    ScreenPlan,
)

CATALOG_FILE: Final = "catalog.json"
REFERENCES_DIR: Final = "references"
# Flight dates are local to each store: days to spare around the run cover every zone,
# clocks skewed by hours and records held offline.
FLIGHT_MARGIN: Final = timedelta(days=2)
# How far into the run the demo's late campaign is imported.
LATE_AT: Final = 0.4
GBP_SUPPLIER: Final = SUPPLIERS - 1
SUPPLIER_NAMES: Final = (
    "Acme Foods",
    "Brightwater Drinks",
    "Copperleaf Tea",
    "Dunmore Dairy",
    "Evergreen Bakery",
    "Fjord Fish",
    "Granary Mills",
    "Highland Crisps",
)
VENDORS: Final = ("geopath.org", "route.org.uk")
TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class Breaks:
    """What is booked or shown wrong on purpose, named, for the demo's line and its tests."""

    one_store: tuple[str, str] | None = None  # (campaign, the one store it is booked for)
    late: str | None = None  # campaign imported part-way through the run
    banner: tuple[str, str] | None = None  # (screen, its layered banner's content)
    wrong: tuple[str, str, str] | None = None  # (screen, content, content whose picture shows)

    def describe(self) -> str:
        """One line for people: what was broken, and which reason each break should bring."""
        parts = []
        if self.one_store:
            parts.append(f"{self.one_store[0]} booked for {self.one_store[1]} only (not_targeted)")
        if self.banner:
            parts.append(
                f"{self.banner[0]} layers a banner ({self.banner[1]}) on a one-zone booking "
                "(overlap)"
            )
        if self.wrong:
            screen, content, shown = self.wrong
            parts.append(f"{screen} shows {shown}'s picture for {content} (screenshot_mismatch)")
        if self.late:
            parts.append(
                f"{self.late} imported {LATE_AT:.0%} into the run (unknown_campaign, then verified)"
            )
        return "; ".join(parts)


@dataclass(frozen=True)
class Bookings:
    """The catalog document to import first, and the late campaign with when it is due."""

    document: dict[str, Any]
    late: dict[str, Any] | None
    late_at_ms: int  # from the run's start, simulated
    breaks: Breaks

    def first(self) -> dict[str, Any]:
        """What the first import holds: everything but the late campaign."""
        if self.late is None:
            return self.document
        campaigns = [c for c in self.document["campaigns"] if c is not self.late]
        return {**self.document, "campaigns": campaigns}


# --- the document ----------------------------------------------------------------------


def book(screens: Sequence[ScreenPlan], options: FleetOptions, now_ms: int) -> Bookings:
    """The catalog that books this fleet (with the demo's breaks when the plan has them)."""
    breaks = _breaks(screens) if options.breaks else Breaks()
    flight = _flight(now_ms, options.duration_ms)
    campaigns = [_campaign(c, flight, breaks) for c in range(CAMPAIGNS)]
    document = {
        "suppliers": [_supplier(s) for s in range(SUPPLIERS)],
        "stores": [_store(store_id) for store_id in sorted({s.store_id for s in screens})],
        "devices": [_device(i, s) for i, s in enumerate(screens)],
        "contents": _contents(screens, options),
        "campaigns": campaigns,
    }
    late = next((c for c in campaigns if c["campaign_id"] == breaks.late), None)
    return Bookings(document, late, round(options.duration_ms * LATE_AT), breaks)


def _breaks(screens: Sequence[ScreenPlan]) -> Breaks:
    """Campaigns to book wrong, picked from the plan so that their plays do happen."""
    reach = Counter(item.campaign_id for s in screens for item in set(s.playlist))
    stores: dict[str, list[str]] = {}
    for s in screens:
        for item in s.playlist:
            stores.setdefault(item.campaign_id, []).append(s.store_id)
    # The campaign on most screens goes late; the next one widest over stores, to one store.
    ranked = [c for c, _ in sorted(reach.items(), key=lambda kv: (-kv[1], kv[0]))]
    late = ranked[0] if ranked else None
    others = sorted(ranked[1:], key=lambda c: (-len(set(stores[c])), -reach[c], c))
    one_store = (others[0], Counter(stores[others[0]]).most_common(1)[0][0]) if others else None
    return Breaks(one_store, late, _banner(screens), _wrong(screens))


def _banner(screens: Sequence[ScreenPlan]) -> tuple[str, str] | None:
    for screen in screens:
        for item in screen.playlist:
            if item.banner is not None:
                return screen.device_id, item.banner.content_id
    return None


def _wrong(screens: Sequence[ScreenPlan]) -> tuple[str, str, str] | None:
    for screen in screens:
        for content, shown in screen.wrong:
            return screen.device_id, content, shown
    return None


def _flight(now_ms: int, duration_ms: int) -> dict[str, str]:
    """Whole months around the run, so that runs in the same month book the same flight
    (and a re-import changes nothing)."""
    start = (datetime.fromtimestamp(now_ms / 1000, UTC) - FLIGHT_MARGIN).date()
    end = (datetime.fromtimestamp((now_ms + duration_ms) / 1000, UTC) + FLIGHT_MARGIN).date()
    after = date(end.year + end.month // 12, end.month % 12 + 1, 1)
    return {"from": start.replace(day=1).isoformat(), "to": after.isoformat()}


def _supplier(s: int) -> dict[str, Any]:
    return {
        "supplier_id": supplier_id(s),
        "name": SUPPLIER_NAMES[s % len(SUPPLIER_NAMES)],
        "currency": currency(s),
        "external_ids": {"spacebrandid": str(5600 + s)},
    }


def supplier_id(s: int) -> str:
    """The plan's supplier id: `sup-00`..."""
    return f"sup-{s:02d}"


def currency(s: int) -> str:
    """A supplier's currency: EUR, but one bills in GBP."""
    return "GBP" if s == GBP_SUPPLIER else "EUR"


def time_zone(store_id: str) -> str:
    """A store's zone: London mostly, Berlin one in eight, and store 3 in Kathmandu (+05:45)."""
    n = int(store_id.rsplit("-", 1)[1])
    if n == 3:
        return "Asia/Kathmandu"
    return "Europe/Berlin" if n % 8 == 2 else "Europe/London"


def _store(store_id: str) -> dict[str, Any]:
    zone = time_zone(store_id)
    city = zone.split("/")[1]
    # OpenOOH venue taxonomy 203: retail, grocery.
    return {
        "store_id": store_id,
        "time_zone": zone,
        "name": f"{city} {store_id}",
        "venue_type": 203,
    }


def _device(index: int, screen: ScreenPlan) -> dict[str, Any]:
    n = index + 1
    return {
        "device_id": screen.device_id,
        "zones": 1,  # the demo's banner screen too: that is its mistake
        "external_ids": {
            "frame_id": f"{2_000_000_000 + n * 37:010d}",  # a UK SPACE frame id: 10 digits
            "ad_unit": f"au-{screen.store_id}-{n % 10:02d}",
            # A locally administered MAC address, as players report theirs.
            "player_ref": f"02:50:50:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
        },
    }


def _contents(screens: Sequence[ScreenPlan], options: FleetOptions) -> list[dict[str, Any]]:
    # The booked length is the one the playlists use first (items draw theirs apart).
    lengths: dict[str, int] = {}
    for screen in screens:
        for item in screen.playlist:
            lengths.setdefault(item.content_id, item.duration_ms)
            if item.banner is not None:
                lengths.setdefault(item.banner.content_id, BANNER_MS)
    default = (sum(options.play_length) // 2) // 1000 * 1000
    return [
        {
            "content_id": content_id(c, k),
            "expected_ms": lengths.get(content_id(c, k), default),
            "name": f"Campaign {c} spot {k}",
            "reference_images": [f"{REFERENCES_DIR}/{content_id(c, k)}.png"],
            "external_ids": {"creative": f"cr-{c:03d}-{k}"},
        }
        for c in range(CAMPAIGNS)
        for k in range(CONTENTS)
    ]


def content_id(campaign: int, k: int) -> str:
    """The plan's content id: `cnt-007-3`."""
    return f"cnt-{campaign:03d}-{k}"


def _campaign(c: int, flight: dict[str, str], breaks: Breaks) -> dict[str, Any]:
    campaign_id, s = f"cmp-{c:03d}", c % SUPPLIERS
    one_store = (
        breaks.one_store if breaks.one_store and breaks.one_store[0] == campaign_id else None
    )
    contents = [content_id(c, k) for k in range(CONTENTS)]
    found: dict[str, Any] = {
        "campaign_id": campaign_id,
        "supplier_id": supplier_id(s),
        "name": f"{SUPPLIER_NAMES[s]} campaign {c}",
        # Stores are open all day; a daypart on some campaigns says so in the catalog's words.
        "flight": {**flight, "dayparts": [{"days": "daily", "from": "00:00", "to": "24:00"}]}
        if c % 6 == 5
        else flight,
        "targets": {"stores": [one_store[1]] if one_store else [], "devices": []},
        "ad_groups": [
            {"ad_group_id": f"ag-{c:03d}-{g}", "contents": contents} for g in range(AD_GROUPS)
        ],
        "price": _price(c, currency(s)),
        "impressions_per_play": _audience(c),
        "external_ids": {
            "order": f"ord-{c:03d}",
            "line": f"ln-{c:03d}-1",
            "spacebuyerid": str(1200 + c),
            "spaceagencyid": str(90 + c % 4),
        },
    }
    if c % 4 == 3:
        # Far above what a screen plays in a day of the simulation: booked, never reached.
        found["cap"] = {"plays_per_screen_per_day": 10_000}
    return found


def _price(c: int, currency_code: str) -> dict[str, str]:
    if c % 2 == 0:
        return {"model": "per_play", "amount": f"0.{100 + 5 * c:04d}", "currency": currency_code}
    return {"model": "cpm", "amount": f"{3 + c % 5}.{7 * c % 100:02d}", "currency": currency_code}


def _audience(c: int) -> dict[str, Any]:
    multiplier = f"{8 + c % 7}.{c % 10}"
    if c % 3 == 2:
        return {"multiplier": multiplier, "sourcetype": 2}  # the publisher's own count
    return {"multiplier": multiplier, "sourcetype": 1, "vendor": VENDORS[c % 3]}


# --- files and import ----------------------------------------------------------------------


def write(bookings: Bookings, folder: Path) -> Path:
    """The catalog (all of it) and its reference images under `folder`; the catalog's path."""
    refs = folder / REFERENCES_DIR
    refs.mkdir(parents=True, exist_ok=True)
    for content in bookings.document["contents"]:
        path = refs / f"{content['content_id']}.png"
        if not path.is_file():
            path.write_bytes(picture(content["content_id"]))
    target = folder / CATALOG_FILE
    target.write_text(json.dumps(bookings.document, indent=2) + "\n")
    return target


class Importer:
    """Puts catalog documents and reference images to the service as an operator."""

    def __init__(self, server_url: str, operator_token: str) -> None:
        self.base = server_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {operator_token}"}

    def catalog(self, document: dict[str, Any], replace: bool = False) -> int:
        """`PUT /v1/catalog` (merged, or `replace`: exactly this); how many entries changed."""
        path = "/v1/catalog?replace=true" if replace else "/v1/catalog"
        answer = self._put(path, json.dumps(document).encode(), "application/json")
        return len(answer.json().get("changes", []))

    def references(self, document: dict[str, Any]) -> int:
        """`PUT /v1/contents/<id>/reference` for every content's picture; how many were new."""
        added = 0
        for content in document["contents"]:
            cid = content["content_id"]
            answer = self._put(f"/v1/contents/{cid}/reference", picture(cid), "image/png")
            added += bool(answer.json().get("created"))
        return added

    def _put(self, path: str, body: bytes, media: str) -> httpx.Response:
        headers = {**self.headers, "Content-Type": media}
        try:
            answer = httpx.put(self.base + path, content=body, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot import the fleet's catalog ({path}): {exc}") from None
        if answer.status_code not in (200, 201):
            raise ConfigError(
                f"expected the service to take the fleet's catalog ({path}), got HTTP "
                f"{answer.status_code}: {answer.text[:500]}"
            )
        return answer
