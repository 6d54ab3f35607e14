"""The catalog document: parsing, every error naming its entry and field, merge and references."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.catalog import (
    MINOR_UNITS,
    AdGroup,
    Catalog,
    Change,
    ad_group_of,
    canonical,
    check_references,
    parse_catalog,
    weekdays,
)
from playproof.catalog_merge import entry_json, merge, to_json
from playproof.errors import CatalogError, ProtocolError

# The issue's example document, verbatim.
EXAMPLE: dict[str, Any] = {
    "suppliers": [
        {
            "supplier_id": "sup-3",
            "name": "Acme Foods",
            "currency": "EUR",
            "external_ids": {"spacebrandid": "5678"},
        }
    ],
    "stores": [
        {
            "store_id": "store-12",
            "time_zone": "Europe/London",
            "name": "High St 12",
            "venue_type": 203,
        }
    ],
    "devices": [
        {
            "device_id": "scr-0042",
            "zones": 1,
            "external_ids": {
                "frame_id": "1234567890",
                "ad_unit": "au-9",
                "player_ref": "00:1b:44:11:3a:b7",
            },
        }
    ],
    "contents": [
        {
            "content_id": "cnt-55",
            "expected_ms": 15000,
            "name": "Winter sale 15s",
            "reference_images": ["refs/cnt-55-a.png"],
            "external_ids": {"creative": "cr-1"},
        }
    ],
    "campaigns": [
        {
            "campaign_id": "cmp-100",
            "supplier_id": "sup-3",
            "name": "Winter sale",
            "flight": {
                "from": "2026-12-01",
                "to": "2027-01-01",
                "dayparts": [{"days": "mon-sat", "from": "08:00", "to": "22:00"}],
            },
            "targets": {"stores": ["store-12"], "devices": []},
            "cap": {"plays_per_screen_per_day": 240},
            "ad_groups": [{"ad_group_id": "ag-7", "contents": ["cnt-55"]}],
            "require_screenshot": True,
            "min_quality": 70,
            "price": {"model": "per_play", "amount": "0.0125", "currency": "EUR"},
            "impressions_per_play": {
                "multiplier": "14.2",
                "sourcetype": 1,
                "vendor": "geopath.org",
            },
            "external_ids": {
                "order": "ord-1",
                "line": "ln-1",
                "spacebuyerid": "1234",
                "spaceagencyid": "91",
            },
        }
    ],
}


def doc(edit: Callable[[dict[str, Any]], object] | None = None) -> bytes:
    """The example document, changed by `edit` (which mutates a deep copy)."""
    data = copy.deepcopy(EXAMPLE)
    if edit is not None:
        edit(data)
    return json.dumps(data).encode()


def campaign(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = data["campaigns"][0]
    return result


def test_the_issues_example_document_parses_with_every_value_kept() -> None:
    catalog = parse_catalog(doc())
    check_references(catalog)
    cmp = catalog.campaigns[0]
    assert cmp.flight.from_ == "2026-12-01" and cmp.flight.dayparts[0].days == "mon-sat"
    assert cmp.price.amount_decimal() == Decimal("0.0125")
    assert cmp.impressions_per_play.multiplier_decimal() == Decimal("14.2")
    assert cmp.contents() == {"cnt-55"}
    assert catalog.devices[0].external_ids["frame_id"] == "1234567890"
    assert catalog.stores[0].venue_type == 203


def test_decimal_strings_are_kept_exactly_as_written() -> None:
    catalog = parse_catalog(doc(lambda d: campaign(d)["price"].update(amount="0.10")))
    assert catalog.campaigns[0].price.amount == "0.10"


def test_omitted_optional_fields_take_their_defaults() -> None:
    def strip(d: dict[str, Any]) -> None:
        for key in ("cap", "impressions_per_play", "require_screenshot", "min_quality"):
            del campaign(d)[key]
        del d["devices"][0]["zones"]

    catalog = parse_catalog(doc(strip))
    cmp = catalog.campaigns[0]
    assert cmp.cap is None and cmp.require_screenshot is False and cmp.min_quality == 0
    assert cmp.impressions_per_play.multiplier == "1" and cmp.impressions_per_play.sourcetype == 0
    assert catalog.devices[0].zones == 1


def test_an_empty_document_is_an_empty_catalog() -> None:
    assert parse_catalog(b"{}") == Catalog()


def set_in(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


CMP = ["campaigns", 0]
ERRORS = [
    (
        set_in([*CMP, "flight", "from"], "2026-13-01"),
        "campaigns[cmp-100].flight.from: expected a date YYYY-MM-DD, got '2026-13-01'",
    ),
    (set_in([*CMP, "flight", "to"], "20270101"), "campaigns[cmp-100].flight.to: expected a date"),
    (
        set_in([*CMP, "flight", "to"], "2026-12-01"),
        "campaigns[cmp-100].flight.to: expected a date after from",
    ),
    (
        set_in([*CMP, "flight", "dayparts", 0, "days"], "mon-funday"),
        "campaigns[cmp-100].flight.dayparts[0].days: expected days like",
    ),
    (
        set_in([*CMP, "flight", "dayparts", 0, "days"], "mon-mon"),
        "campaigns[cmp-100].flight.dayparts[0].days: expected days like",
    ),
    (
        set_in([*CMP, "flight", "dayparts", 0, "from"], "24:00"),
        "campaigns[cmp-100].flight.dayparts[0].from: expected a local time",
    ),
    (
        set_in([*CMP, "flight", "dayparts", 0, "to"], "8:00"),
        "campaigns[cmp-100].flight.dayparts[0].to: expected a local time",
    ),
    (
        set_in([*CMP, "flight", "dayparts", 0, "to"], "08:00"),
        "campaigns[cmp-100].flight.dayparts[0].to: expected a time other than from",
    ),
    (
        set_in([*CMP, "price", "model"], "cpc"),
        "campaigns[cmp-100].price.model: expected 'per_play' or 'cpm', got 'cpc'",
    ),
    (
        set_in([*CMP, "price", "amount"], "-1"),
        "campaigns[cmp-100].price.amount: expected a decimal string",
    ),
    (
        set_in([*CMP, "price", "amount"], "1e3"),
        "campaigns[cmp-100].price.amount: expected a decimal string",
    ),
    (
        set_in([*CMP, "price", "amount"], "NaN"),
        "campaigns[cmp-100].price.amount: expected a decimal string",
    ),
    (
        set_in([*CMP, "price", "amount"], 5),
        "campaigns[cmp-100].price.amount: expected `str`, got `int`",
    ),
    (
        set_in([*CMP, "price", "currency"], "EURO"),
        "campaigns[cmp-100].price.currency: expected an ISO 4217",
    ),
    (
        set_in([*CMP, "price", "currency"], "USD"),
        "campaigns[cmp-100].price.currency: expected the supplier sup-3's currency 'EUR', got",
    ),
    (
        set_in([*CMP, "impressions_per_play", "multiplier"], "1.2.3"),
        "campaigns[cmp-100].impressions_per_play.multiplier: expected a decimal",
    ),
    (
        set_in([*CMP, "impressions_per_play", "sourcetype"], 4),
        "campaigns[cmp-100].impressions_per_play.sourcetype: expected 0, 1, 2 or 3",
    ),
    (
        set_in([*CMP, "impressions_per_play", "vendor"], None),
        "campaigns[cmp-100].impressions_per_play.vendor: expected the measurement vendor",
    ),
    (
        set_in([*CMP, "min_quality"], 101),
        "campaigns[cmp-100].min_quality: expected an integer from 0 to 100, got 101",
    ),
    (
        set_in([*CMP, "cap", "plays_per_screen_per_day"], 0),
        "campaigns[cmp-100].cap.plays_per_screen_per_day: expected an integer from 1 up",
    ),
    (
        set_in([*CMP, "require_screenshot"], 1),
        "campaigns[cmp-100].require_screenshot: expected `bool`, got `int`",
    ),
    (
        set_in([*CMP, "targets", "stores"], ["store-12", "store-12"]),
        "campaigns[cmp-100].targets.stores[1]: expected an id not already at ",
    ),
    (
        set_in([*CMP, "ad_groups", 0, "contents"], ["bad id"]),
        "campaigns[cmp-100].ad_groups[ag-7].contents[0]: expected an id",
    ),
    (
        set_in([*CMP, "ad_groups", 0, "contents"], 7),
        "campaigns[cmp-100].ad_groups[ag-7].contents: expected `array`, got `int`",
    ),
    (
        set_in([*CMP, "campaign_id"], "cmp 100"),
        "campaigns[0].campaign_id: expected an id of 1 to 64",
    ),
    (set_in([*CMP, "price", "colour"], "red"), "campaigns[cmp-100].price.colour: unknown field"),
    (
        set_in([*CMP, "external_ids", "order"], 1),
        "campaigns[cmp-100].external_ids.order: expected `str`, got `int`",
    ),
    (
        lambda d: campaign(d)["price"].pop("currency"),
        "campaigns[cmp-100].price.currency: required field missing",
    ),
    (
        set_in(["devices", 0, "external_ids", "frame_id"], "123456789"),
        "devices[scr-0042].external_ids.frame_id: expected a SPACE frame id of exactly 10 digits",
    ),
    (
        set_in(["devices", 0, "external_ids", "frame_id"], "12345678901"),
        "devices[scr-0042].external_ids.frame_id",
    ),
    (
        set_in(["devices", 0, "external_ids", "player_ref"], "x" * 37),
        "devices[scr-0042].external_ids.player_ref: expected at most 36 characters",
    ),
    (set_in(["devices", 0, "zones"], 0), "devices[scr-0042].zones: expected an integer from 1"),
    (
        set_in(["stores", 0, "time_zone"], "Europe/Londn"),
        "stores[store-12].time_zone: expected an IANA time zone",
    ),
    (set_in(["stores", 0, "time_zone"], "/etc/passwd"), "stores[store-12].time_zone"),
    (
        set_in(["stores", 0, "name"], "High St\n12"),
        "stores[store-12].name: expected text without line breaks",
    ),
    (
        set_in(["suppliers", 0, "external_ids", "brand"], "a\rb"),
        "suppliers[sup-3].external_ids.brand: expected text without line breaks",
    ),
    (
        set_in(["suppliers", 0, "external_ids", "br\nand"], "x"),
        "suppliers[sup-3].external_ids.br\nand: expected text without line breaks",
    ),
    (
        set_in(["suppliers", 0, "currency"], "eur"),
        "suppliers[sup-3].currency: expected an ISO 4217",
    ),
    (
        set_in(["contents", 0, "expected_ms"], 0),
        "contents[cnt-55].expected_ms: expected an integer from 1 to 86400000",
    ),
    (set_in(["contents", 0, "expected_ms"], 86_400_001), "contents[cnt-55].expected_ms"),
    (
        lambda d: d["contents"].append(dict(d["contents"][0])),
        "contents[1].content_id: expected an id not already at contents[0], got 'cnt-55'",
    ),
    (
        lambda d: campaign(d)["ad_groups"].append({"ad_group_id": "ag-7"}),
        "campaigns[cmp-100].ad_groups[1].ad_group_id: expected an id not already at",
    ),
]


@pytest.mark.parametrize(("edit", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_every_catalog_error_names_the_entry_and_the_field(
    edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(doc(edit))
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"\xff\xfe", b"[" * 100_000])
def test_a_body_that_is_not_a_catalog_object_is_a_catalog_error(body: bytes) -> None:
    with pytest.raises(CatalogError, match=r"^catalog"):
        parse_catalog(body)


def test_a_top_level_list_of_the_wrong_type_is_named_by_its_field() -> None:
    with pytest.raises(CatalogError, match=r"^campaigns: expected `array`, got `int`$"):
        parse_catalog(b'{"campaigns": 1}')


def test_a_catalog_error_is_a_protocol_error() -> None:
    assert issubclass(CatalogError, ProtocolError)


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("mon-sat", {0, 1, 2, 3, 4, 5}),
        ("sat,sun", {5, 6}),
        ("mon", {0}),
        ("mon-fri,sun", {0, 1, 2, 3, 4, 6}),
        ("mon-fri, sun", {0, 1, 2, 3, 4, 6}),
        ("daily", set(range(7))),
        ("fri-mon", {4, 5, 6, 0}),
        ("sun-sat", set(range(7))),
    ],
)
def test_daypart_days_name_weekdays_with_ranges_that_may_wrap(
    days: str, expected: set[int]
) -> None:
    assert weekdays(days) == expected


@pytest.mark.parametrize("days", ["", "Mon", "monday", "mon-", "daily,mon", "mon-mon", "mon;tue"])
def test_daypart_days_that_are_not_the_grammar_are_refused(days: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        weekdays(days)


def test_an_overnight_daypart_and_a_24_00_end_are_accepted() -> None:
    parts = [
        {"days": "fri", "from": "22:00", "to": "02:00"},
        {"days": "sun", "from": "18:00", "to": "24:00"},
    ]
    catalog = parse_catalog(doc(set_in([*CMP, "flight", "dayparts"], parts)))
    assert [p.to for p in catalog.campaigns[0].flight.dayparts] == ["02:00", "24:00"]


def test_the_currency_table_has_the_minor_units_of_iso_4217() -> None:
    expected = {
        "EUR": 2,
        "USD": 2,
        "GBP": 2,
        "JPY": 0,
        "BHD": 3,
        "KWD": 3,
        "JOD": 3,
        "OMR": 3,
        "TND": 3,
        "KRW": 0,
        "ISK": 0,
        "CLP": 0,
        "VND": 0,
        "CHF": 2,
        "INR": 2,
    }
    assert {code: MINOR_UNITS[code] for code in expected} == expected
    assert all(len(code) == 3 and code.isupper() for code in MINOR_UNITS)


def test_a_price_in_any_currency_of_the_table_parses_when_the_supplier_bills_in_it() -> None:
    def yen(d: dict[str, Any]) -> None:
        d["suppliers"][0]["currency"] = "JPY"
        campaign(d)["price"]["currency"] = "JPY"

    assert parse_catalog(doc(yen)).campaigns[0].price.currency == "JPY"


def test_a_campaign_whose_supplier_is_not_in_the_document_is_not_checked_for_currency() -> None:
    def other(d: dict[str, Any]) -> None:
        d["suppliers"] = []
        campaign(d)["price"]["currency"] = "USD"

    assert parse_catalog(doc(other)).campaigns[0].price.currency == "USD"


# --- references ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(suppliers=[]),
            "campaigns[cmp-100].supplier_id: expected a supplier in the catalog, got 'sup-3'",
        ),
        (
            lambda d: d.update(stores=[]),
            "campaigns[cmp-100].targets.stores[0]: expected a store in the catalog, got 'store-12'",
        ),
        (
            set_in([*CMP, "targets", "devices"], ["scr-9"]),
            "campaigns[cmp-100].targets.devices[0]: expected a device in the catalog, got 'scr-9'",
        ),
        (
            lambda d: d.update(contents=[]),
            "campaigns[cmp-100].ad_groups[ag-7].contents[0]: expected a content in the catalog, "
            "got 'cnt-55'",
        ),
    ],
)
def test_references_to_entries_not_in_the_catalog_are_refused(
    edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    catalog = parse_catalog(doc(edit))
    with pytest.raises(CatalogError) as caught:
        check_references(catalog)
    assert str(caught.value) == message


def test_references_check_the_currency_against_a_supplier_from_an_earlier_import() -> None:
    suppliers = parse_catalog(doc(lambda d: d.update(campaigns=[])))
    usd = parse_catalog(
        doc(lambda d: (d.update(suppliers=[]), campaign(d)["price"].update(currency="USD")))
    )
    merged, _ = merge(suppliers, usd, replace=False)
    with pytest.raises(CatalogError, match=r"^campaigns\[cmp-100\]\.price\.currency"):
        check_references(merged)


# --- canonical form and merge ---------------------------------------------------


def test_ad_group_of_finds_the_campaigns_group_or_none() -> None:
    cmp = parse_catalog(doc()).campaigns[0]
    assert ad_group_of(cmp, "ag-7") == AdGroup(ad_group_id="ag-7", contents=["cnt-55"])
    assert ad_group_of(cmp, "ag-8") is None


def shuffled(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same catalog with its entries and id lists in another order."""
    rng = random.Random(seed)
    data = copy.deepcopy(data)
    for items in data.values():
        rng.shuffle(items)
    for cmp in data["campaigns"]:
        rng.shuffle(cmp["ad_groups"])
        for group in cmp["ad_groups"]:
            rng.shuffle(group["contents"])
        rng.shuffle(cmp["targets"]["stores"])
    return data


def bigger_example() -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE)
    for n in range(5):
        data["stores"].append({"store_id": f"store-{n}", "time_zone": "America/New_York"})
        data["contents"].append({"content_id": f"cnt-{n}", "expected_ms": 10_000})
    cmp = campaign(data)
    cmp["targets"]["stores"] += [f"store-{n}" for n in range(5)]
    cmp["ad_groups"].append({"ad_group_id": "ag-1", "contents": [f"cnt-{n}" for n in range(5)]})
    return data


@given(seed=st.integers(0, 2**32))
def test_order_does_not_matter_to_the_canonical_json(seed: int) -> None:
    data = bigger_example()
    first = parse_catalog(json.dumps(data).encode())
    again = parse_catalog(json.dumps(shuffled(data, seed)).encode())
    assert first == again
    assert to_json(first) == to_json(again)
    assert parse_catalog(to_json(first)) == first


def test_to_json_sorts_a_catalog_built_in_code() -> None:
    catalog = parse_catalog(json.dumps(bigger_example()).encode())
    reversed_ = Catalog(stores=catalog.stores[::-1], contents=catalog.contents[::-1])
    assert to_json(reversed_) == to_json(Catalog(stores=catalog.stores, contents=catalog.contents))


def test_a_merge_adds_new_entries_and_leaves_the_others() -> None:
    current = parse_catalog(doc())
    incoming = parse_catalog(b'{"stores": [{"store_id": "store-13", "time_zone": "Europe/Paris"}]}')
    merged, changes = merge(current, incoming, replace=False)
    assert [s.store_id for s in merged.stores] == ["store-12", "store-13"]
    assert merged.campaigns == current.campaigns
    assert changes == [Change("store", "store-13", "added", None, entry_json(incoming.stores[0]))]


def test_a_merge_updates_an_entry_and_keeps_both_versions_in_the_change() -> None:
    current = parse_catalog(doc())
    incoming = parse_catalog(doc(set_in([*CMP, "min_quality"], 80)))
    merged, changes = merge(current, incoming, replace=False)
    assert merged.campaigns[0].min_quality == 80
    assert [(c.kind, c.id, c.action) for c in changes] == [("campaign", "cmp-100", "updated")]
    before, after = (json.loads(x) for x in (changes[0].before or "", changes[0].after or ""))
    assert (before["min_quality"], after["min_quality"]) == (70, 80)


def test_replace_makes_the_catalog_exactly_the_file_and_retires_the_rest() -> None:
    current = parse_catalog(doc())
    incoming = parse_catalog(doc(lambda d: d.update(devices=[], campaigns=[])))
    merged, changes = merge(current, incoming, replace=True)
    assert merged == incoming
    assert [(c.kind, c.id, c.action, c.after) for c in changes] == [
        ("device", "scr-0042", "retired", None),
        ("campaign", "cmp-100", "retired", None),
    ]
    assert all(c.before for c in changes)


def test_without_replace_an_omitted_entry_is_not_retired() -> None:
    current = parse_catalog(doc())
    merged, changes = merge(current, parse_catalog(b"{}"), replace=False)
    assert merged == current and changes == []


catalog_ids = st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True)


def small_catalog(store_ids: list[str], zone: str, content_ids: list[str], ms: int) -> Catalog:
    stores = [{"store_id": s, "time_zone": zone} for s in store_ids]
    contents = [{"content_id": c, "expected_ms": ms} for c in content_ids]
    return parse_catalog(json.dumps({"stores": stores, "contents": contents}).encode())


catalogs = st.builds(
    small_catalog,
    catalog_ids,
    st.sampled_from(["Europe/London", "Asia/Tokyo"]),
    catalog_ids,
    st.integers(1, 3),
)


@given(current=catalogs, incoming=catalogs, replace=st.booleans())
def test_importing_the_same_file_twice_changes_nothing_the_second_time(
    current: Catalog, incoming: Catalog, replace: bool
) -> None:
    once, _ = merge(current, incoming, replace)
    twice, changes = merge(once, incoming, replace)
    assert changes == [] and twice == once


@given(current=catalogs, incoming=catalogs, replace=st.booleans())
def test_a_merge_reports_exactly_the_entries_that_differ(
    current: Catalog, incoming: Catalog, replace: bool
) -> None:
    merged, changes = merge(current, incoming, replace)
    ids = {(c.kind, c.id) for c in changes}
    before = {("store", s.store_id): s for s in current.stores} | {
        ("content", c.content_id): c for c in current.contents
    }
    after = {("store", s.store_id): s for s in merged.stores} | {
        ("content", c.content_id): c for c in merged.contents
    }
    differ = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert ids == differ
    if replace:
        assert merged == canonical(incoming)
    else:
        assert {s.store_id for s in merged.stores} == {
            s.store_id for s in current.stores + incoming.stores
        }
