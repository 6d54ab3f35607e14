"""Statement arithmetic against an independent exact computation, and the statement's invariants.

The oracle here works in `fractions.Fraction` with its own half-even rounding,
so that it shares nothing with the `Decimal` contexts and `quantize` it checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from playproof.billing import (
    CSV_COLUMNS,
    FINAL,
    PROVISIONAL,
    AdjustmentLine,
    LineKey,
    PlayCounts,
    PlayKey,
    StatementLine,
    adjustments,
    csv_row,
    digest,
    finality,
    settled_at,
    statement,
    statement_line,
    statement_lines,
    to_json_dict,
)
from playproof.catalog import (
    MINOR_UNITS,
    Campaign,
    Catalog,
    Flight,
    ImpressionsPerPlay,
    Price,
    Supplier,
    index,
)
from playproof.errors import CatalogError
from playproof.money import decimal_text
from playproof.verification import REASONS

DAY_MS = 86_400_000
PERIOD = {"period_from_ms": 1_795_000_000_000, "period_to_ms": 1_795_000_000_000 + 30 * DAY_MS}
CURRENCIES = sorted(MINOR_UNITS)
MODELS = ("per_play", "cpm")

# Decimal strings as the catalog takes them: digits, an optional point and more digits.
decimals = st.from_regex(r"[0-9]{1,7}(\.[0-9]{1,12})?", fullmatch=True)
billables = st.integers(min_value=0, max_value=10**12)


def make_campaign(
    model: str = "per_play",
    price: str = "0.0125",
    multiplier: str = "1",
    currency: str = "EUR",
    supplier_id: str = "sup-1",
    campaign_id: str = "cmp-1",
) -> Campaign:
    return Campaign(
        campaign_id=campaign_id,
        supplier_id=supplier_id,
        flight=Flight(from_="2026-12-01", to="2027-01-01"),
        price=Price(model=model, amount=price, currency=currency),
        impressions_per_play=ImpressionsPerPlay(multiplier=multiplier, sourcetype=2),
    )


def make_counts(
    verified: int = 0,
    failed: int = 0,
    pending: int = 0,
    partial: int = 0,
    reasons: dict[str, int] | None = None,
    key: tuple[str, str, str] = ("sup-1", "cmp-1", "ag-1"),
) -> PlayCounts:
    valid = verified + failed + pending
    by_reason = reasons if reasons is not None else ({"overlap": failed} if failed else {})
    supplier_id, campaign_id, ad_group_id = key
    return PlayCounts(
        supplier_id=supplier_id,
        campaign_id=campaign_id,
        ad_group_id=ad_group_id,
        plays=valid + partial,
        valid=valid,
        partial=partial,
        verified=verified,
        failed=failed,
        failed_by_reason=by_reason,
        pending=pending,
    )


def priced(
    verified: int,
    model: str = "per_play",
    price: str = "0.0125",
    multiplier: str = "1",
    currency: str = "EUR",
    key: tuple[str, str, str] = ("sup-1", "cmp-1", "ag-1"),
) -> StatementLine:
    campaign = make_campaign(model, price, multiplier, currency, key[0], key[1])
    return statement_line(make_counts(verified, key=key), campaign, currency)


def half_even(value: Fraction, digits: int) -> Fraction:
    """The oracle's rounding: to `digits` decimals, a tie to the even neighbour."""
    scaled = value * 10**digits
    low = scaled.numerator // scaled.denominator
    rest = scaled - low
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and low % 2 == 1):
        low += 1
    return Fraction(low, 10**digits)


def oracle(model: str, billable: int, price: str, multiplier: str, currency: str) -> Fraction:
    impressions = billable * Fraction(multiplier)
    exact = billable * Fraction(price) if model == "per_play" else impressions * Fraction(price)
    return half_even(exact if model == "per_play" else exact / 1000, MINOR_UNITS[currency])


def amount_text(line: StatementLine) -> str:
    return str(
        to_json_dict(statement([line], **PERIOD, tz="UTC", status=PROVISIONAL))["lines"][0][
            "amount"
        ]
    )


# --- amounts -----------------------------------------------------------------------------


@given(
    model=st.sampled_from(MODELS),
    billable=billables,
    price=decimals,
    multiplier=decimals,
    currency=st.sampled_from(CURRENCIES),
)
@example(model="per_play", billable=1, price="0.125", multiplier="1", currency="EUR")
@example(model="cpm", billable=3, price="0.5", multiplier="0.5", currency="BHD")
def test_every_amount_is_the_exact_value_rounded_half_even_to_the_minor_unit(
    model: str, billable: int, price: str, multiplier: str, currency: str
) -> None:
    line = priced(billable, model, price, multiplier, currency)
    assert Fraction(line.amount) == oracle(model, billable, price, multiplier, currency)
    # Written with exactly the currency's minor digits, however many the value needs.
    digits = MINOR_UNITS[currency]
    assert line.amount.as_tuple().exponent == -digits
    text = amount_text(line)
    assert len(text.partition(".")[2]) == digits and "E" not in text


@given(billable=billables, multiplier=decimals, model=st.sampled_from(MODELS))
def test_impressions_are_exactly_billable_plays_times_the_multiplier(
    billable: int, multiplier: str, model: str
) -> None:
    line = priced(billable, model, "1", multiplier)
    assert Fraction(line.impressions) == billable * Fraction(multiplier)
    assert line.billable_plays == line.verified == billable


@pytest.mark.parametrize(
    ("model", "price", "multiplier", "billable", "currency", "expected"),
    [
        ("per_play", "0.125", "1", 1, "EUR", "0.12"),
        ("per_play", "0.135", "1", 1, "EUR", "0.14"),
        ("per_play", "0.005", "1", 1, "EUR", "0.00"),
        ("per_play", "0.005", "1", 3, "EUR", "0.02"),
        ("per_play", "2.5", "1", 1, "JPY", "2"),
        ("per_play", "3.5", "1", 1, "JPY", "4"),
        ("per_play", "0.0005", "1", 1, "BHD", "0.000"),
        ("per_play", "0.0015", "1", 1, "BHD", "0.002"),
        ("per_play", "0.00005", "1", 1, "UYW", "0.0000"),
        ("per_play", "9.995", "1", 1, "EUR", "10.00"),
        # cpm: 100 impressions at 1.25 per thousand is 0.125 exactly.
        ("cpm", "1.25", "100", 1, "EUR", "0.12"),
        ("cpm", "1.35", "50", 2, "EUR", "0.14"),
        ("cpm", "2500", "1", 1, "JPY", "2"),
        ("cpm", "0.0125", "14.2", 0, "EUR", "0.00"),
    ],
)
def test_ties_round_to_the_even_minor_unit(
    model: str, price: str, multiplier: str, billable: int, currency: str, expected: str
) -> None:
    assert amount_text(priced(billable, model, price, multiplier, currency)) == expected


def test_prices_and_counts_past_28_digits_are_not_rounded_on_the_way() -> None:
    """Decimal's default context keeps 28 digits; a statement must not depend on it."""
    price, multiplier, billable = "123456789012.1234567890123456789015", "987654.3210987", 10**15
    lines = []
    for i, model in enumerate(MODELS):
        line = priced(billable, model, price, multiplier, key=("sup-1", "cmp-1", f"ag-{i}"))
        assert Fraction(line.amount) == oracle(model, billable, price, multiplier, "EUR")
        assert Fraction(line.impressions) == billable * Fraction(multiplier)
        lines.append(line)
    (total,) = statement(lines, **PERIOD, tz="UTC", status=PROVISIONAL).currency_totals
    assert Fraction(total.amount) == sum((Fraction(x.amount) for x in lines), Fraction(0))
    assert Fraction(total.impressions) == 2 * billable * Fraction(multiplier)


# --- totals ---------------------------------------------------------------------------------

line_specs = st.lists(
    st.tuples(
        st.sampled_from(["sup-1", "sup-2", "sup-3"]),
        st.sampled_from(["cmp-1", "cmp-2"]),
        st.sampled_from(["ag-1", "ag-2"]),
        st.sampled_from(["EUR", "JPY", "BHD", "USD", "UYW", "KWD"]),
        st.sampled_from(MODELS),
        decimals,
        decimals,
        billables,
    ),
    max_size=12,
    unique_by=lambda spec: spec[:3],
)


def lines_of(specs: list[tuple[Any, ...]]) -> list[StatementLine]:
    return [
        priced(billable, model, price, mult, currency, (sup, cmp, ag))
        for sup, cmp, ag, currency, model, price, mult, billable in specs
    ]


@given(specs=line_specs)
def test_totals_are_sums_of_the_rounded_lines_and_never_mix_currencies(
    specs: list[tuple[Any, ...]],
) -> None:
    lines = lines_of(specs)
    made = statement(lines, **PERIOD, tz="UTC", status=PROVISIONAL)
    by_currency = {t.currency: t for t in made.currency_totals}
    assert set(by_currency) == {line.currency for line in lines}
    for currency, total in by_currency.items():
        mine = [line for line in lines if line.currency == currency]
        assert Fraction(total.amount) == sum((Fraction(x.amount) for x in mine), Fraction(0))
        assert total.amount.as_tuple().exponent == -MINOR_UNITS[str(currency)]
        assert total.billable_plays == sum(x.billable_plays for x in mine)
        assert Fraction(total.impressions) == sum(
            (Fraction(x.impressions) for x in mine), Fraction(0)
        )
    by_supplier = {(t.supplier_id, t.currency): t for t in made.supplier_totals}
    assert set(by_supplier) == {(x.supplier_id, x.currency) for x in lines}
    for (supplier, currency), total in by_supplier.items():
        mine = [x for x in lines if (x.supplier_id, x.currency) == (supplier, currency)]
        assert Fraction(total.amount) == sum((Fraction(x.amount) for x in mine), Fraction(0))
        assert total.amount_due == total.amount


def test_totals_add_the_rounded_lines_not_the_exact_values() -> None:
    """Three lines of 0.005 EUR each bill 0.00 each, so 0.00 in total (not 0.015 → 0.02)."""
    lines = [priced(1, price="0.005", key=("sup-1", "cmp-1", f"ag-{i}")) for i in range(3)]
    made = to_json_dict(statement(lines, **PERIOD, tz="UTC", status=PROVISIONAL))
    assert [t["amount"] for t in made["totals"]["by_currency"]] == ["0.00"]


def test_one_supplier_billed_in_two_currencies_gets_a_total_in_each() -> None:
    lines = [
        priced(3, price="1.5", currency="EUR", key=("sup-1", "cmp-1", "ag-1")),
        priced(3, price="150", currency="JPY", key=("sup-1", "cmp-2", "ag-1")),
    ]
    made = to_json_dict(statement(lines, **PERIOD, tz="UTC", status=PROVISIONAL))
    totals = [(t["supplier_id"], t["currency"], t["amount"]) for t in made["totals"]["by_supplier"]]
    assert totals == [("sup-1", "EUR", "4.50"), ("sup-1", "JPY", "450")]


@given(verified=st.integers(0, 50), failed=st.integers(0, 50), pending=st.integers(0, 50))
def test_a_lines_counts_are_the_stores_and_billable_plus_failed_plus_pending_is_valid(
    verified: int, failed: int, pending: int
) -> None:
    line = statement_line(make_counts(verified, failed, pending, partial=4), make_campaign(), "EUR")
    assert line.plays == line.valid + line.partial
    assert line.billable_plays + line.failed + line.pending == line.valid


def test_a_play_failed_for_several_reasons_counts_once_in_failed_and_under_each_reason() -> None:
    counts = make_counts(failed=2, reasons={"overlap": 2, "low_quality": 1, "over_cap": 0})
    line = statement_line(counts, make_campaign(), "EUR")
    assert line.failed == 2
    # In REASONS order, zero counts left out.
    assert list(line.failed_by_reason.items()) == [("overlap", 2), ("low_quality", 1)]
    row = dict(zip(CSV_COLUMNS, csv_row(line), strict=True))
    assert row["failed_overlap"] == "2" and row["failed_low_quality"] == "1"
    assert row["failed_over_cap"] == "0"
    assert [c for c in CSV_COLUMNS if c.startswith("failed_")] == [f"failed_{r}" for r in REASONS]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"plays": 11}, "plays = valid + partial"),
        ({"verified": 7}, "verified + failed + pending = valid"),
        ({"pending": -1}, "zero or more"),
        ({"failed_by_reason": {"rainy_day": 2}}, "failure reasons among"),
        ({"failed_by_reason": {"overlap": 3}}, "no reason counted more than failed"),
        ({"failed_by_reason": {"overlap": 1}}, "every failed play to have a reason"),
    ],
)
def test_counts_that_contradict_themselves_are_refused(change: dict[str, Any], why: str) -> None:
    counts = msgspec.structs.replace(make_counts(5, 2, 1, partial=2), **change)
    with pytest.raises(ValueError, match=re.escape(why)):
        statement_line(counts, make_campaign(), "EUR")


def test_a_campaign_missing_from_the_catalog_bills_nothing_and_keeps_its_counts() -> None:
    counts = make_counts(failed=3, reasons={"unknown_campaign": 3}, partial=1)
    line = statement_line(counts, None, "EUR")
    assert (line.plays, line.failed, line.billable_plays) == (4, 3, 0)
    assert line.price_model is None and line.price_amount is None and line.impressions == 0
    assert amount_text(line) == "0.00"
    nobody = statement_line(counts, None, None)
    assert nobody.currency is None and amount_text(nobody) == "0"


def test_what_the_catalog_cannot_price_is_refused_naming_the_entry() -> None:
    with pytest.raises(CatalogError, match=r"campaigns\[cmp-1\]: expected a campaign"):
        statement_line(make_counts(verified=1), None, "EUR")
    with pytest.raises(CatalogError, match=r"campaigns\[cmp-1\]\.price\.currency"):
        statement_line(make_counts(verified=1), make_campaign(currency="USD"), "EUR")
    with pytest.raises(CatalogError, match=r"suppliers\[sup-1\]"):
        statement_line(make_counts(verified=1), make_campaign(), None)
    with pytest.raises(ValueError, match="its supplier 'sup-9'"):
        statement_line(make_counts(verified=1), make_campaign(supplier_id="sup-9"), "EUR")


def test_lines_are_priced_from_the_catalog_and_sorted_by_key() -> None:
    catalog = Catalog(
        suppliers=[Supplier(supplier_id="sup-1", currency="JPY")],
        campaigns=[make_campaign(price="2.5", currency="JPY")],
    )
    counts = [
        make_counts(failed=1, reasons={"supplier_mismatch": 1}, key=("sup-0", "cmp-1", "ag-1")),
        make_counts(verified=3, key=("sup-1", "cmp-1", "ag-2")),
        make_counts(verified=1, key=("sup-1", "cmp-1", "ag-1")),
    ]
    lines = statement_lines(counts, index(catalog))
    assert [x.key for x in lines] == sorted(c.key for c in counts)
    assert [(x.currency, x.amount) for x in lines] == [
        (None, Decimal(0)),
        ("JPY", Decimal("2")),
        ("JPY", Decimal("8")),
    ]


# --- digest and JSON -----------------------------------------------------------------------


@given(specs=line_specs, data=st.data())
def test_the_digest_does_not_depend_on_line_order(
    specs: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    lines = lines_of(specs)
    shuffled = data.draw(st.permutations(lines))
    assert digest(shuffled) == digest(lines)
    made = statement(shuffled, **PERIOD, tz="UTC", status=PROVISIONAL)
    assert made.digest == digest(lines)


def changed(line: StatementLine, field: str) -> StatementLine:
    """The line with one value changed (money stays on its currency's grid)."""
    value = getattr(line, field)
    if field == "amount":
        new: Any = value + Decimal("0.01")
    elif field == "currency":
        new = "USD"
    elif isinstance(value, dict):
        new = {**value, "over_cap": 1}
    elif isinstance(value, Decimal):
        new = value + Decimal("0.5")
    elif isinstance(value, int):
        new = value + 1
    else:
        new = f"{value or ''}x"
    return msgspec.structs.replace(line, **{field: new})


@pytest.mark.parametrize("field", StatementLine.__struct_fields__)
def test_the_digest_changes_when_any_value_of_a_line_changes(field: str) -> None:
    lines = [priced(40, "cpm", "3.75", "14.2"), priced(2, key=("sup-2", "cmp-1", "ag-1"))]
    before = digest(lines)
    assert digest([changed(lines[0], field), lines[1]]) != before


def test_the_digest_changes_when_an_adjustment_changes() -> None:
    lines = [priced(3)]
    fix = AdjustmentLine(
        **PERIOD,
        supplier_id="sup-1",
        campaign_id="cmp-1",
        ad_group_id="ag-1",
        billable_plays=1,
        impressions=Decimal(1),
        amount=Decimal("0.01"),
        currency="EUR",
    )
    assert digest(lines, [fix]) != digest(lines)
    more = msgspec.structs.replace(fix, plays=(PlayKey("scr-1", "j-1", 7),))
    assert digest(lines, [more]) != digest(lines, [fix])


def test_equal_values_written_differently_give_the_same_digest() -> None:
    assert digest([priced(7, "cpm", "2.50", "14.20")]) == digest([priced(7, "cpm", "2.5", "14.2")])


@given(specs=line_specs)
@example(specs=[("sup-1", "cmp-1", "ag-1", "EUR", "per_play", "0.0000001", "1000", 3)])
def test_a_buyer_recomputes_the_digest_from_the_json_as_documented(
    specs: list[tuple[Any, ...]],
) -> None:
    lines = [msgspec.structs.replace(x, vendor='Mésure ☂ "q"\n') for x in lines_of(specs)]
    body = json.loads(json.dumps(to_json_dict(statement(lines, **PERIOD, tz="UTC", status=FINAL))))
    document = {"adjustments": body["adjustments"], "lines": body["lines"]}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == body["digest"]


def test_money_and_impressions_are_strings_without_exponents() -> None:
    line = priced(5, "cpm", "0.0000001", "2000")
    made = to_json_dict(statement([line], **PERIOD, tz="Europe/Paris", status=PROVISIONAL))
    row = made["lines"][0]
    assert (row["impressions"], row["price_amount"], row["amount"]) == (
        "10000",
        "0.0000001",
        "0.00",
    )
    start = datetime.fromtimestamp(PERIOD["period_from_ms"] / 1000, UTC)
    assert made["from"] == start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert made["tz"] == "Europe/Paris"
    assert decimal_text(Decimal("1E+3")) == "1000"
    assert decimal_text(Decimal("0E-9")) == "0"
    assert decimal_text(Decimal("-0.50")) == "-0.5"


def test_the_statement_names_its_rounding_and_every_currency_in_it() -> None:
    lines = [priced(1, currency="BHD"), priced(1, currency="JPY", key=("sup-2", "c", "a"))]
    note = statement(lines, **PERIOD, tz="UTC", status=PROVISIONAL).rounding_note
    assert "half-even" in note and "sums of the rounded lines" in note
    assert "BHD 3, JPY 0" in note


# --- adjustments ---------------------------------------------------------------------------


@given(specs=line_specs)
def test_adjustments_between_identical_lines_are_empty(specs: list[tuple[Any, ...]]) -> None:
    lines = lines_of(specs)
    assert adjustments(lines, list(reversed(lines)), **PERIOD) == []


@given(
    specs=line_specs,
    data=st.data(),
)
def test_the_final_lines_plus_their_adjustments_are_the_lines_recomputed(
    specs: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    final = lines_of(specs)
    # A correction: some plays decided again, some prices fixed, some lines new or gone.
    recomputed = []
    for sup, cmp, ag, currency, model, price, mult, billable in specs:
        if data.draw(st.booleans(), label="keep"):
            billable = data.draw(st.integers(0, 10**6), label="billable")
            price = data.draw(decimals, label="price")
            recomputed.append(priced(billable, model, price, mult, currency, (sup, cmp, ag)))
    recomputed += lines_of(data.draw(line_specs.filter(lambda s: all(x[1] == "cmp-3" for x in s))))
    found = adjustments(final, recomputed, **PERIOD)
    for key in {x.key for x in final} | {x.key for x in recomputed}:
        old = [x for x in final if x.key == key]
        new = [x for x in recomputed if x.key == key]
        fixes = [x for x in found if x.key == key]
        for field in ("billable_plays", "impressions", "amount"):
            then = sum((Fraction(getattr(x, field)) for x in old), Fraction(0))
            now = sum((Fraction(getattr(x, field)) for x in new), Fraction(0))
            assert then + sum((Fraction(getattr(x, field)) for x in fixes), Fraction(0)) == now
        for fix in fixes:
            assert fix.amount.as_tuple().exponent == -MINOR_UNITS[str(fix.currency)]
            assert (fix.period_from_ms, fix.period_to_ms) == tuple(PERIOD.values())


def test_a_price_correction_after_a_final_statement_arrives_as_an_adjustment() -> None:
    """The period turns final; a catalog fix later bills the difference on the next statement."""
    end = PERIOD["period_to_ms"]
    waits = {"longest_play_ms": DAY_MS, "skew_ms": 1_800_000, "offline_ms": 14_400_000}
    settled = settled_at(end, grace_ms=3_600_000, **waits)
    assert finality(
        end, settled, **waits, grace_ms=3_600_000, pending_in_period=0, caught_up_to_ms=settled
    )
    final = statement([priced(1000, price="0.0125")], **PERIOD, tz="UTC", status=FINAL)
    recomputed = [priced(1000, price="0.0135")]
    plays = {
        LineKey("sup-1", "cmp-1", "ag-1"): [PlayKey("scr-1", "j-1", 2), PlayKey("scr-1", "j-1", 1)]
    }
    fixes = adjustments(final.lines, recomputed, **PERIOD, corrected_plays=plays)
    assert [(x.billable_plays, x.amount, x.currency) for x in fixes] == [
        (0, Decimal("1.00"), "EUR")
    ]
    assert fixes[0].plays == (PlayKey("scr-1", "j-1", 1), PlayKey("scr-1", "j-1", 2))
    later = {"period_from_ms": PERIOD["period_to_ms"], "period_to_ms": end + 30 * DAY_MS}
    following = statement([priced(10)], **later, tz="UTC", status=PROVISIONAL, adjustments=fixes)
    body = to_json_dict(following)
    assert body["adjustments"][0]["period_from"] == to_json_dict(final)["from"]
    assert body["adjustments"][0]["plays"][0] == {
        "device_id": "scr-1",
        "journal_id": "j-1",
        "seq": 1,
    }
    total = body["totals"]["by_currency"][0]
    assert (total["amount"], total["adjustments"], total["amount_due"]) == ("0.12", "1.00", "1.12")
    # The final statement itself is untouched: its digest is still its own lines'.
    assert final.digest == digest(final.lines)


def test_a_decision_swap_that_moves_no_sum_is_still_on_record() -> None:
    """One play verified instead of another: same sums, but the plays are named."""
    plays = {LineKey("sup-1", "cmp-1", "ag-1"): [PlayKey("scr-1", "j-1", 5)]}
    fixes = adjustments([priced(3)], [priced(3)], **PERIOD, corrected_plays=plays)
    assert [(x.billable_plays, x.impressions, x.amount) for x in fixes] == [(0, 0, Decimal(0))]
    with pytest.raises(ValueError, match="corrected plays of the period's lines"):
        adjustments(
            [priced(3)], [priced(3)], **PERIOD, corrected_plays={LineKey("x", "y", "z"): []}
        )


def test_a_currency_change_reverses_the_old_line_and_bills_the_new() -> None:
    fixes = adjustments(
        [priced(4, price="1.5")], [priced(4, price="150", currency="JPY")], **PERIOD
    )
    assert [(x.billable_plays, x.amount, x.currency) for x in fixes] == [
        (-4, Decimal("-6.00"), "EUR"),
        (4, Decimal("600"), "JPY"),
    ]


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="one line per key"):
        statement([priced(1), priced(2)], **PERIOD, tz="UTC", status=PROVISIONAL)
    with pytest.raises(ValueError, match="one line per key"):
        adjustments([priced(1), priced(2)], [], **PERIOD)


# --- finality -----------------------------------------------------------------------------

waits = st.integers(min_value=0, max_value=10 * DAY_MS)


@given(end=st.integers(0, 4 * 10**12), longest=waits, skew=waits, offline=waits, grace=waits)
def test_a_period_is_final_exactly_when_every_wait_has_passed_and_everyone_caught_up(
    end: int, longest: int, skew: int, offline: int, grace: int
) -> None:
    at = end + longest + skew + offline + grace
    assert settled_at(end, longest, skew, offline, grace) == at

    def final(now: int, pending: int = 0, caught_up: int = at) -> bool:
        return finality(end, now, longest, skew, offline, grace, pending, caught_up)

    assert final(at) and final(at + 1, caught_up=at + 1)
    assert not final(at - 1)
    assert not final(at, pending=1)
    assert not final(at + DAY_MS, caught_up=at - 1)


@pytest.mark.parametrize("bad", ["longest_play_ms", "skew_ms", "offline_ms", "grace_ms"])
def test_negative_waits_are_refused(bad: str) -> None:
    values = {"longest_play_ms": 1, "skew_ms": 1, "offline_ms": 1, "grace_ms": 1, bad: -1}
    with pytest.raises(ValueError, match="zero or more"):
        settled_at(0, **values)


def test_a_statement_takes_only_a_known_status_and_a_real_period() -> None:
    with pytest.raises(ValueError, match="status"):
        statement([], **PERIOD, tz="UTC", status="draft")
    with pytest.raises(ValueError, match="start before its end"):
        statement([], period_from_ms=5, period_to_ms=5, tz="UTC", status=FINAL)
