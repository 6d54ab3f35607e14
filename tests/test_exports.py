"""Buyer formats (pure): every DV360 and UK Playout field against the formats, and the windows.

The expected values are written out by hand from the formats (DV360 Out-of-Home
`sellers.adPlays.batchCreate` v1; Outsmart Playout digital file format 1.7 and
field validation 2.0), not computed by the code under test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playproof.catalog import parse_catalog
from playproof.exports import (
    DV360,
    PLAYOUT,
    PLAYOUT_FIELDS,
    Books,
    Classifier,
    ExportPlay,
    Frames,
    Refused,
    Rendered,
    csv_field,
    dv360_body,
    playout_ref,
    utc_offset,
)

MANDATORY = (
    "frameid",
    "orderid",
    "spacebuyerid",
    "spacebrandid",
    "creativeid",
    "creativename",
    "mediaownerplayoutref",
)


def ms(*parts: int) -> int:
    """A UTC time as epoch milliseconds: year, month, day, hour, minute, second, ms."""
    *fields, millis = (*parts, 0, 0, 0, 0, 0, 0)[:7]
    return int(datetime(*fields, tzinfo=UTC).timestamp()) * 1000 + millis


NOW = ms(2026, 12, 2, 12)


def catalog_doc() -> dict[str, Any]:
    """A catalog naming every external id both formats take."""
    return {
        "suppliers": [
            {
                "supplier_id": "sup-1",
                "currency": "GBP",
                "external_ids": {"spacebrandid": "4021"},
            }
        ],
        "stores": [
            {"store_id": "store-ldn", "time_zone": "Europe/London"},
            {"store_id": "store-ktm", "time_zone": "Asia/Kathmandu"},
            {"store_id": "store-nfl", "time_zone": "America/St_Johns"},
        ],
        "devices": [
            {
                "device_id": "scr-1",
                "external_ids": {
                    "frame_id": "1234567890",
                    "ad_unit": "au-77",
                    "player_ref": "00:1B:44:11:3A:B7",
                },
            }
        ],
        "contents": [
            {
                "content_id": "cnt-1",
                "expected_ms": 15000,
                "name": "winter_cocoa.mp4",
                "external_ids": {"creative": "cr-9", "thirdpartycreativeref": "urn:agency:77"},
            }
        ],
        "campaigns": [
            {
                "campaign_id": "cmp-1",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-01-01", "to": "2027-01-01"},
                "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
                "price": {"model": "cpm", "amount": "12.5", "currency": "GBP"},
                "impressions_per_play": {"multiplier": "2.75"},
                "external_ids": {
                    "order": "ord-1",
                    "line": "line-3",
                    "spacebuyerid": "1001",
                    "spaceagencyid": "2002",
                    "buyercampaignref": "BCR-1",
                },
            }
        ],
    }


def books(doc: dict[str, Any] | None = None) -> Books:
    return Books(parse_catalog(json.dumps(doc or catalog_doc()).encode()))


def play(start: int, length: int = 15_000, store: str = "store-ldn", **fields: Any) -> ExportPlay:
    values = {
        "device_id": "scr-1",
        "journal_id": "j-1",
        "seq": 7,
        "start_ts": start,
        "end_ts": start + length,
        "campaign_id": "cmp-1",
        "content_id": "cnt-1",
        "supplier_id": "sup-1",
        "store_id": store,
    }
    return ExportPlay(**{**values, **fields})


def render(buyer: str, p: ExportPlay, doc: dict[str, Any] | None = None, now: int = NOW) -> Any:
    return Classifier(buyer, books(doc), now, "8675309").render(p)


def fields_of(line: str) -> list[str]:
    """A Playout record read back as a CSV reader reads it."""
    assert line.endswith("\n") and line.count("\n") == 1
    (row,) = list(csv.reader(io.StringIO(line)))
    assert len(row) == 19
    return row


def playout_fields(p: ExportPlay, doc: dict[str, Any] | None = None) -> dict[str, str]:
    """The fields of a play's record, exported an hour after it ended."""
    found = render(PLAYOUT, p, doc, now=p.end_ts + 3_600_000)
    assert isinstance(found, Rendered), found
    return dict(zip(PLAYOUT_FIELDS, fields_of(found.record), strict=True))


# --- DV360 -------------------------------------------------------------------------


def test_a_dv360_ad_play_carries_its_times_impressions_and_external_ids() -> None:
    found = render(DV360, play(ms(2026, 12, 2, 9, 30, 0, 250)))
    assert isinstance(found, Rendered)
    assert json.loads(found.record) == {
        "parent": "sellers/8675309",
        "adPlay": {
            "startTime": "2026-12-02T09:30:00.250Z",
            "endTime": "2026-12-02T09:30:15.250Z",
            "impressionCount": 2.75,
            "lineExternalId": "line-3",
            "adUnitExternalId": "au-77",
            "creativeAssetExternalId": "cr-9",
        },
    }
    # The number is the catalog's decimal, written as such (not a float's digits).
    assert '"impressionCount":2.75,' in found.record


@given(st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False))
def test_dv360_impression_count_is_the_multiplier_exactly(multiplier: Decimal) -> None:
    doc = catalog_doc()
    doc["campaigns"][0]["impressions_per_play"] = {"multiplier": f"{multiplier:f}"}
    found = render(DV360, play(NOW - 60_000), doc)
    assert isinstance(found, Rendered)
    ad_play = json.loads(found.record, parse_float=Decimal)["adPlay"]
    assert Decimal(ad_play["impressionCount"]) == multiplier


def test_dv360_takes_a_play_started_3_days_ago_and_lists_apart_one_a_millisecond_older() -> None:
    three_days = 3 * 86_400_000
    assert isinstance(render(DV360, play(NOW - three_days)), Rendered)
    older = render(DV360, play(NOW - three_days - 1))
    assert older == Refused(("outside_window",))
    assert older.final, "time never brings it back into the window"


def test_dv360_lists_apart_a_play_not_over_yet_until_a_later_export() -> None:
    running = render(DV360, play(NOW - 10_000, length=15_000))
    assert running == Refused(("future",))
    assert not running.final


def test_dv360_lists_apart_a_play_whose_end_is_not_after_its_start() -> None:
    assert render(DV360, play(NOW - 60_000, length=0)) == Refused(("zero_length",))


@pytest.mark.parametrize(
    ("kind", "key"),
    [("campaigns", "line"), ("devices", "ad_unit"), ("contents", "creative")],
)
def test_dv360_lists_apart_a_play_missing_an_external_id_naming_it(kind: str, key: str) -> None:
    doc = catalog_doc()
    del doc[kind][0]["external_ids"][key]
    found = render(DV360, play(NOW - 60_000), doc)
    assert found == Refused((f"missing_external_id:{key}",))
    assert not found.final, "a catalog correction lets the next export take it"


def test_dv360_a_second_play_on_the_same_ad_unit_line_creative_and_start_is_a_duplicate() -> None:
    classifier = Classifier(DV360, books(), NOW, "1")
    first, second = play(NOW - 60_000), play(NOW - 60_000, seq=8)
    for p, expected in ((first, Rendered), (second, Refused)):
        found = classifier.render(p)
        assert isinstance(found, Rendered)
        assert isinstance(classifier.admit(p, found), expected)
    later = play(NOW - 30_000, seq=9)
    rendered = classifier.render(later)
    assert isinstance(rendered, Rendered)
    assert classifier.admit(later, rendered, filed_before=True) == Refused(("duplicate",))


def test_a_dv360_request_body_holds_at_most_1000_ad_plays() -> None:
    body = dv360_body(['{"a":1}'] * 1000)
    assert body.endswith(b"]}\n")
    assert len(json.loads(body)["requests"]) == 1000
    with pytest.raises(ValueError, match="at most 1000"):
        dv360_body(['{"a":1}'] * 1001)


# --- UK Playout -------------------------------------------------------------------------


def test_a_playout_record_is_the_19_fields_in_the_format_order() -> None:
    p = play(ms(2026, 12, 2, 9, 30, 0, 250), length=15_500)
    found = render(PLAYOUT, p)
    assert isinstance(found, Rendered)
    ref = hashlib.sha256(b"scr-1/j-1/7").hexdigest()[:32]
    assert found.record == (
        "1234567890,2026-12-02T09:30:00.250,+00:00,2026-12-02T09:30:15.750,+00:00,15500,,"
        "ord-1,line-3,1001,2002,4021,BCR-1,cr-9,winter_cocoa.mp4,urn:agency:77,,"
        f"00:1B:44:11:3A:B7,{ref}\n"
    )
    assert found.slot == "1234567890", "a play is filed on its device's frame"


@pytest.mark.parametrize(
    ("store", "start", "offsets"),
    [
        # Europe/London, last Sunday of March 2026: 01:00 GMT becomes 02:00 BST.
        ("store-ldn", ms(2026, 3, 29, 0, 59, 50), ("+00:00", "+01:00")),
        ("store-ldn", ms(2026, 3, 29, 1, 0, 0), ("+01:00", "+01:00")),
        ("store-ldn", ms(2026, 3, 29, 0, 59, 44, 999), ("+00:00", "+00:00")),
        # Last Sunday of October 2026: 02:00 BST becomes 01:00 GMT (at 01:00 UTC).
        ("store-ldn", ms(2026, 10, 25, 0, 59, 50), ("+01:00", "+00:00")),
        ("store-ldn", ms(2026, 10, 25, 1, 0, 0), ("+00:00", "+00:00")),
        ("store-ldn", ms(2026, 7, 1, 12), ("+01:00", "+01:00")),
        ("store-ktm", ms(2026, 12, 2, 9), ("+05:45", "+05:45")),
        ("store-nfl", ms(2026, 12, 2, 9), ("-03:30", "-03:30")),
    ],
)
def test_playout_offsets_are_the_registered_stores_at_each_instant(
    store: str, start: int, offsets: tuple[str, str]
) -> None:
    fields = playout_fields(play(start, store=store), catalog_doc())
    assert (fields["startutcoffset"], fields["endutcoffset"]) == offsets
    # The dates are UTC whatever the store's zone; spotlength is end - start.
    assert (
        fields["startdate"]
        == datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    )
    assert fields["spotlength"] == "15000"


def test_a_play_across_the_october_change_shows_both_offsets_and_its_true_length() -> None:
    start = ms(2026, 10, 25, 0, 59, 59, 500)
    fields = playout_fields(play(start, length=1_000))
    assert fields["startdate"] == "2026-10-25T00:59:59.500"
    assert fields["enddate"] == "2026-10-25T01:00:00.500"
    assert (fields["startutcoffset"], fields["endutcoffset"]) == ("+01:00", "+00:00")
    assert fields["spotlength"] == "1000"


ZONES = ["Europe/London", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe", "UTC"]


@given(st.integers(ms(2000, 1, 1), ms(2037, 1, 1)), st.sampled_from(ZONES))
def test_an_offset_is_the_zones_utcoffset_at_that_instant(instant: int, name: str) -> None:
    zone = ZoneInfo(name)
    offset = datetime.fromtimestamp(instant / 1000, zone).utcoffset()
    assert offset is not None
    text = utc_offset(zone, instant)
    sign = -1 if text[0] == "-" else 1
    assert text[0] in "+-" and text[3] == ":" and len(text) == 6
    shown = timedelta(hours=int(text[1:3]), minutes=int(text[4:6])) * sign
    assert shown == offset


def test_mediaownerplayoutref_is_32_hex_digits_of_sha256_of_device_journal_seq() -> None:
    p = play(NOW - 60_000, device_id="scr-9", journal_id="j-2", seq=123)
    assert playout_ref(p) == hashlib.sha256(b"scr-9/j-2/123").hexdigest()[:32]


@given(
    st.lists(
        st.tuples(st.sampled_from(["scr-1", "scr-12", "scr-1/2"]), st.integers(1, 10**6)),
        unique=True,
        max_size=30,
    )
)
def test_mediaownerplayoutref_differs_for_every_play(keys: list[tuple[str, int]]) -> None:
    refs = {playout_ref(play(0, device_id=d, seq=s)) for d, s in keys}
    assert len(refs) == len(keys)


TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1
).filter(lambda t: t == t.strip())


@settings(max_examples=200)
@given(order=TEXT.filter(lambda t: len(t) <= 256), name=TEXT.filter(lambda t: len(t) <= 128))
def test_text_is_quoted_when_it_holds_a_comma_or_quote_and_reads_back_whole(
    order: str, name: str
) -> None:
    doc = catalog_doc()
    doc["campaigns"][0]["external_ids"]["order"] = order
    doc["contents"][0]["name"] = name
    found = render(PLAYOUT, play(NOW - 60_000), doc)
    assert isinstance(found, Rendered)
    fields = dict(zip(PLAYOUT_FIELDS, fields_of(found.record), strict=True))
    assert (fields["orderid"], fields["creativename"]) == (order, name)
    for value in (order, name):
        quoted = f'"{value.replace(chr(34), chr(34) * 2)}"'
        expected = quoted if ("," in value or '"' in value) else value
        assert csv_field(value) == expected
        assert expected in found.record


def test_quotes_are_doubled_inside_a_quoted_field() -> None:
    assert csv_field('Winter, "hot" cocoa') == '"Winter, ""hot"" cocoa"'
    assert csv_field('12" screen') == '"12"" screen"'
    assert csv_field("plain") == "plain"


MANDATORY_SOURCES = [
    ("devices", "frame_id", "missing_external_id:frame_id"),
    ("campaigns", "order", "missing_external_id:order"),
    ("campaigns", "spacebuyerid", "missing_external_id:spacebuyerid"),
    ("suppliers", "spacebrandid", "missing_external_id:spacebrandid"),
    ("contents", "creative", "missing_external_id:creative"),
]


@pytest.mark.parametrize(("kind", "key", "reason"), MANDATORY_SOURCES)
def test_a_play_missing_a_mandatory_playout_field_is_listed_apart(
    kind: str, key: str, reason: str
) -> None:
    doc = catalog_doc()
    del doc[kind][0]["external_ids"][key]
    found = render(PLAYOUT, play(NOW - 60_000), doc)
    assert found == Refused((reason,))
    assert not found.final


def test_a_content_without_a_name_is_listed_apart_and_an_unknown_store_too() -> None:
    doc = catalog_doc()
    del doc["contents"][0]["name"]
    assert render(PLAYOUT, play(NOW - 60_000), doc) == Refused(("missing_name",))
    assert render(PLAYOUT, play(NOW - 60_000, store="store-x")) == Refused(("unknown_store",))


OPTIONAL_SOURCES = [
    ("campaigns", "line", "lineid"),
    ("campaigns", "spaceagencyid", "spaceagencyid"),
    ("campaigns", "buyercampaignref", "buyercampaignref"),
    ("contents", "thirdpartycreativeref", "thirdpartycreativeref"),
    ("devices", "player_ref", "playerref"),
]


@pytest.mark.parametrize(("kind", "key", "field"), OPTIONAL_SOURCES)
def test_an_optional_playout_field_without_a_source_is_left_empty(
    kind: str, key: str, field: str
) -> None:
    doc = catalog_doc()
    del doc[kind][0]["external_ids"][key]
    fields = playout_fields(play(NOW - 60_000), doc)
    assert fields[field] == ""
    assert all(fields[name] for name in MANDATORY)


ALL_IDS = [(kind, key) for kind, key, _ in MANDATORY_SOURCES] + [
    (kind, key) for kind, key, _ in OPTIONAL_SOURCES
]


@given(st.sets(st.sampled_from(ALL_IDS)))
def test_no_record_is_ever_sent_with_an_empty_mandatory_field(gone: set[tuple[str, str]]) -> None:
    doc = catalog_doc()
    for kind, key in gone:
        del doc[kind][0]["external_ids"][key]
    found = render(PLAYOUT, play(NOW - 60_000), doc)
    missing_mandatory = {f"missing_external_id:{key}" for kind, key, _ in MANDATORY_SOURCES}
    expected = missing_mandatory & {f"missing_external_id:{key}" for _, key in gone}
    if expected:
        assert isinstance(found, Refused) and set(found.reasons) == expected
    else:
        assert isinstance(found, Rendered)
        fields = dict(zip(PLAYOUT_FIELDS, fields_of(found.record), strict=True))
        assert all(fields[name] for name in MANDATORY)


LENGTHS = [
    ("campaigns", "order", 256),
    ("campaigns", "line", 36),
    ("campaigns", "buyercampaignref", 64),
    ("contents", "creative", 64),
    ("contents", "thirdpartycreativeref", 128),
    ("devices", "player_ref", 36),
]


@pytest.mark.parametrize(("kind", "key", "limit"), LENGTHS)
def test_playout_text_fields_take_their_maximum_length_and_not_one_character_more(
    kind: str, key: str, limit: int
) -> None:
    doc = catalog_doc()
    doc[kind][0]["external_ids"][key] = "é" * limit  # characters, not bytes
    assert isinstance(render(PLAYOUT, play(NOW - 60_000), doc), Rendered)
    if key == "player_ref":
        return  # the catalog itself refuses a longer player_ref
    doc[kind][0]["external_ids"][key] = "é" * (limit + 1)
    assert render(PLAYOUT, play(NOW - 60_000), doc) == Refused((f"too_long:{key}",))


def test_a_creative_name_takes_128_characters_and_not_129() -> None:
    doc = catalog_doc()
    doc["contents"][0]["name"] = "n" * 128
    assert isinstance(render(PLAYOUT, play(NOW - 60_000), doc), Rendered)
    doc["contents"][0]["name"] = "n" * 129
    assert render(PLAYOUT, play(NOW - 60_000), doc) == Refused(("too_long:name",))


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("0", True), ("2147483647", True), ("2147483648", False), ("007", False), ("12a", False)],
)
def test_space_ids_are_int4s(value: str, accepted: bool) -> None:
    doc = catalog_doc()
    doc["campaigns"][0]["external_ids"]["spacebuyerid"] = value
    found = render(PLAYOUT, play(NOW - 60_000), doc)
    assert isinstance(found, Rendered) == accepted
    if not accepted:
        assert found == Refused(("invalid_external_id:spacebuyerid",))


def test_a_frame_id_past_int4_is_listed_apart() -> None:
    doc = catalog_doc()
    doc["devices"][0]["external_ids"]["frame_id"] = "2147483648"
    found = render(PLAYOUT, play(NOW - 60_000), doc)
    assert found == Refused(("invalid_external_id:frame_id",))


def test_text_padded_with_spaces_is_listed_apart() -> None:
    doc = catalog_doc()
    doc["campaigns"][0]["external_ids"]["order"] = " ord-1"
    assert render(PLAYOUT, play(NOW - 60_000), doc) == Refused(("padded:order",))


def test_playout_takes_plays_of_the_last_14_days_and_none_in_the_future() -> None:
    fourteen_days = 14 * 86_400_000
    assert isinstance(render(PLAYOUT, play(NOW - fourteen_days)), Rendered)
    assert render(PLAYOUT, play(NOW - fourteen_days - 1)) == Refused(("outside_window",))
    assert isinstance(render(PLAYOUT, play(NOW - 15_000)), Rendered), "just over: taken"
    assert render(PLAYOUT, play(NOW - 14_999)) == Refused(("future",))


def test_every_reason_that_applies_is_listed_together() -> None:
    doc = catalog_doc()
    del doc["devices"][0]["external_ids"]["frame_id"]
    del doc["contents"][0]["external_ids"]["creative"]
    found = render(PLAYOUT, play(NOW - 20 * 86_400_000), doc)
    assert found == Refused(
        ("outside_window", "missing_external_id:frame_id", "missing_external_id:creative")
    )
    assert found.final


# --- overlaps on a frame ------------------------------------------------------------------


def test_a_play_may_overlap_a_kept_one_on_its_frame_by_1_5_s_and_not_a_millisecond_more() -> None:
    frames = Frames()
    assert frames.admit("1234567890", 0, 15_000)
    assert frames.admit("1234567890", 13_500, 28_500), "exactly 1.5 s"
    assert not frames.admit("1234567890", 26_999, 40_000), "1.501 s into the previous play"
    assert frames.admit("1234567891", 26_999, 40_000), "another frame"


def test_a_play_overlapping_one_filed_by_an_earlier_export_is_refused() -> None:
    classifier = Classifier(PLAYOUT, books(), NOW)
    classifier.frames.load([("1234567890", NOW - 100_000, NOW - 80_000)])
    late = play(NOW - 90_000)
    rendered = classifier.render(late)
    assert isinstance(rendered, Rendered)
    assert classifier.admit(late, rendered) == Refused(("overlap",))


INTERVALS = st.lists(
    st.tuples(st.sampled_from(["f1", "f2"]), st.integers(0, 200_000), st.integers(0, 60_000)),
    max_size=60,
)


@settings(max_examples=300)
@given(filed=INTERVALS, offered=INTERVALS)
def test_kept_plays_on_a_frame_never_overlap_by_more_than_1_5_s(
    filed: list[tuple[str, int, int]], offered: list[tuple[str, int, int]]
) -> None:
    """Plays filed before are kept whatever they overlap; each play offered in start order is
    kept exactly when it overlaps no kept play of its frame by more than 1.5 s."""
    frames = Frames()
    kept = [(f, s, s + n) for f, s, n in filed]
    frames.load(kept)
    for frame, start, length in sorted(offered, key=lambda x: x[1]):
        end = start + length
        clash = any(f == frame and min(e, end) - max(s, start) > 1500 for f, s, e in kept)
        assert frames.admit(frame, start, end) is not clash
        if not clash:
            kept.append((frame, start, end))
