"""Billing statements (pure, no I/O): exact amounts, totals, adjustments, digest, finality.

A statement has one line per (supplier, campaign, ad group) of a period. The
store counts the plays; this module prices them from the catalog, adds them up
and seals them with a digest, so that the route, the CLI and the dashboard all
say the same thing.

Arithmetic. Money and impressions are `Decimal`s and every step is exact:
`impressions = billable plays × multiplier`; a `per_play` line bills
`billable plays × price`, a `cpm` line `impressions × price / 1000`. Only then is
each line's amount rounded, half-even, to its currency's ISO 4217 minor unit.
Totals are sums of the rounded lines, per currency; an adjustment's amount is
the difference of two rounded amounts, so a final statement plus its
adjustments is always exactly the statement recomputed.

Canonical form (what `digest` hashes; a buyer can recompute it from the JSON).
The document is the JSON object `{"adjustments": [...], "lines": [...]}`, each
element exactly the object `to_json_dict` gives for it, lines sorted by
(supplier_id, campaign_id, ad_group_id) and adjustments by that key, then
period, then currency. It is written with object keys sorted, no whitespace
(separators `,` and `:`), strings as JSON escapes them with non-ASCII left as
UTF-8, integers as integers, absent values as `null`, and every decimal as a
string: amounts with exactly their currency's minor digits (`"12.50"`, JPY
`"125"`), other decimals in plain notation without trailing zeros (`"14.2"`,
`"0"`, never an exponent). The digest is the lowercase hex SHA-256 of its UTF-8
bytes. (For these values this is the JSON Canonicalization Scheme, RFC 8785.)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, NamedTuple

import msgspec

from playproof.catalog import Campaign, CatalogIndex
from playproof.errors import CatalogError
from playproof.money import (
    EXACT,
    decimal_text,
    exact_product,
    exact_sum,
    minor_units,
    money_text,
    round_amount,
    zero_amount,
)
from playproof.verification import REASONS

PROVISIONAL: Final = "provisional"
FINAL: Final = "final"
STATUSES: Final = (PROVISIONAL, FINAL)
PER_PLAY: Final = "per_play"
CPM: Final = "cpm"
# A CPM price is per thousand impressions: the amount is scaled by 10**-3.
_CPM_SCALE: Final = -3

# The count fields of a line, in the order a statement lists them.
_COUNTED: Final = ("plays", "valid", "partial", "verified", "failed", "pending", "billable_plays")


class LineKey(NamedTuple):
    """What a statement line is for."""

    supplier_id: str
    campaign_id: str
    ad_group_id: str


class PlayKey(NamedTuple):
    """One play, as the journal names it."""

    device_id: str
    journal_id: str
    seq: int


class Keyed(msgspec.Struct, frozen=True, kw_only=True):
    """Anything about one supplier, campaign and ad group."""

    supplier_id: str
    campaign_id: str
    ad_group_id: str

    @property
    def key(self) -> LineKey:
        """The line it is about."""
        return LineKey(self.supplier_id, self.campaign_id, self.ad_group_id)


class PlayCounts(Keyed, frozen=True, kw_only=True):
    """What the store counted for one supplier, campaign and ad group in the period.

    `failed` counts failed plays; `failed_by_reason` counts them again under each
    of their reasons, so a play failed for two reasons adds one to `failed` and
    one to each reason: the reasons may sum to more than `failed`, never less.
    """

    plays: int
    valid: int
    partial: int
    verified: int
    failed: int
    failed_by_reason: dict[str, int] = {}
    pending: int


class StatementLine(PlayCounts, frozen=True, kw_only=True):
    """One priced line: the counts, impressions, price and rounded amount.

    A line whose campaign is not in the catalog has no price (`price_model`,
    `price_amount`, `sourcetype` and `vendor` are None) and bills nothing; its
    `currency` is None when its supplier is not in the catalog either.
    """

    billable_plays: int
    impressions: Decimal
    sourcetype: int | None
    vendor: str | None
    price_model: str | None
    price_amount: Decimal | None
    amount: Decimal
    currency: str | None


class AdjustmentLine(Keyed, frozen=True, kw_only=True):
    """A change to a final period's line: deltas (now − then) and the plays it corrects."""

    period_from_ms: int
    period_to_ms: int
    billable_plays: int
    impressions: Decimal
    amount: Decimal
    currency: str | None
    plays: tuple[PlayKey, ...] = ()


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """Sums over one supplier in one currency, or (supplier_id None) over one currency.

    `amount` sums the rounded lines, `adjustments` the adjustment lines, and
    `amount_due` is both together.
    """

    supplier_id: str | None
    currency: str | None
    plays: int = 0
    valid: int = 0
    partial: int = 0
    verified: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = {}
    pending: int = 0
    billable_plays: int = 0
    impressions: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)
    adjustments: Decimal = Decimal(0)
    amount_due: Decimal = Decimal(0)


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """A period's statement; `digest` seals its lines and adjustments."""

    period_from_ms: int
    period_to_ms: int
    tz: str
    status: str
    lines: tuple[StatementLine, ...]
    adjustments: tuple[AdjustmentLine, ...]
    supplier_totals: tuple[Totals, ...]
    currency_totals: tuple[Totals, ...]
    rounding_note: str
    digest: str


# A line as a CSV row: its fields in order, `failed_by_reason` as one column per reason.
CSV_COLUMNS: Final = tuple(
    column
    for field in StatementLine.__struct_fields__
    for column in ((f"failed_{r}" for r in REASONS) if field == "failed_by_reason" else (field,))
)


# --- lines -------------------------------------------------------------------------


def statement_line(
    counts: PlayCounts, campaign: Campaign | None, currency: str | None
) -> StatementLine:
    """Price one line: `campaign` from the catalog (None if unknown), `currency` the supplier's."""
    _check_counts(counts)
    if campaign is None:
        priced = _unpriced(counts, currency)
    else:
        priced = _priced(counts, campaign, currency)
    return StatementLine(
        **counts.key._asdict(),
        **{f: getattr(counts, f) for f in _COUNTED if f != "billable_plays"},
        failed_by_reason=_by_reason(counts.failed_by_reason),
        billable_plays=counts.verified,
        **priced,
        currency=currency,
    )


def statement_lines(counts: Iterable[PlayCounts], catalog: CatalogIndex) -> list[StatementLine]:
    """Every line of the period's counts, priced from the catalog, sorted by key."""
    lines = []
    for item in counts:
        supplier = catalog.suppliers.get(item.supplier_id)
        currency = None if supplier is None else supplier.currency
        lines.append(statement_line(item, catalog.campaigns.get(item.campaign_id), currency))
    return sorted(lines, key=_line_order)


def _priced(counts: PlayCounts, campaign: Campaign, currency: str | None) -> dict[str, Any]:
    _check_billable(counts, campaign, currency)
    qty, price = campaign.impressions_per_play, campaign.price
    impressions = exact_product(Decimal(counts.verified), qty.multiplier_decimal())
    if price.model == PER_PLAY:
        exact = exact_product(Decimal(counts.verified), price.amount_decimal())
    elif price.model == CPM:
        exact = exact_product(impressions, price.amount_decimal()).scaleb(_CPM_SCALE, EXACT)
    else:
        at = f"campaigns[{campaign.campaign_id}].price.model"
        raise CatalogError(f"{at}: expected 'per_play' or 'cpm', got {price.model!r}")
    return {
        "impressions": impressions,
        "sourcetype": qty.sourcetype,
        "vendor": qty.vendor,
        "price_model": price.model,
        "price_amount": price.amount_decimal(),
        "amount": round_amount(exact, currency),
    }


def _unpriced(counts: PlayCounts, currency: str | None) -> dict[str, Any]:
    if counts.verified:
        raise CatalogError(
            f"campaigns[{counts.campaign_id}]: expected a campaign in the catalog "
            f"to price {counts.verified} verified plays, got none"
        )
    nothing = ("sourcetype", "vendor", "price_model", "price_amount")
    return {"impressions": Decimal(0), **dict.fromkeys(nothing), "amount": zero_amount(currency)}


def _by_reason(counts: Mapping[str, int]) -> dict[str, int]:
    """Reasons in REASONS order, zero counts left out, so equal lines serialize alike."""
    return {r: counts[r] for r in REASONS if counts.get(r)}


def _check_counts(counts: PlayCounts) -> None:
    key = "/".join(counts.key)
    numbers = (counts.plays, counts.valid, counts.partial, counts.verified, counts.failed)
    if min(*numbers, counts.pending, *counts.failed_by_reason.values()) < 0:
        raise ValueError(f"{key}: expected counts of zero or more, got {counts}")
    if counts.plays != counts.valid + counts.partial:
        raise ValueError(f"{key}: expected plays = valid + partial, got {counts}")
    if counts.verified + counts.failed + counts.pending != counts.valid:
        raise ValueError(f"{key}: expected verified + failed + pending = valid, got {counts}")
    _check_reasons(key, counts)


def _check_reasons(key: str, counts: PlayCounts) -> None:
    by_reason = counts.failed_by_reason
    unknown = sorted(set(by_reason) - set(REASONS))
    if unknown:
        raise ValueError(f"{key}: expected failure reasons among {REASONS}, got {unknown}")
    # Each failed play has at least one reason and counts once under each of them.
    if max(by_reason.values(), default=0) > counts.failed:
        raise ValueError(f"{key}: expected no reason counted more than failed, got {counts}")
    if sum(by_reason.values()) < counts.failed:
        raise ValueError(f"{key}: expected every failed play to have a reason, got {counts}")


def _check_billable(counts: PlayCounts, campaign: Campaign, currency: str | None) -> None:
    if not counts.verified:
        return
    at = f"campaigns[{campaign.campaign_id}]"
    if campaign.supplier_id != counts.supplier_id:
        raise ValueError(
            f"{at}: expected verified plays of its supplier {campaign.supplier_id!r}, "
            f"got {counts.verified} of {counts.supplier_id!r}"
        )
    if currency is None:
        raise CatalogError(f"suppliers[{counts.supplier_id}]: expected in the catalog, got none")
    if campaign.price.currency != currency:
        raise CatalogError(
            f"{at}.price.currency: expected the supplier's currency {currency!r}, "
            f"got {campaign.price.currency!r}"
        )


def _line_order(line: StatementLine | AdjustmentLine) -> tuple[Any, ...]:
    if isinstance(line, StatementLine):
        return line.key
    return (*line.key, line.period_from_ms, line.period_to_ms, line.currency or "")


# --- adjustments --------------------------------------------------------------------


def adjustments(
    final_lines: Iterable[StatementLine],
    recomputed_lines: Iterable[StatementLine],
    *,
    period_from_ms: int,
    period_to_ms: int,
    corrected_plays: Mapping[LineKey, Iterable[PlayKey]] | None = None,
) -> list[AdjustmentLine]:
    """What turns a final period's lines into the same period recomputed now, line by line.

    `corrected_plays` names, per line, the plays whose decision changed; a line
    they name gets an adjustment even when its sums did not move (one play
    verified in place of another), so that every correction is on record.
    """
    before, after = _keyed(final_lines), _keyed(recomputed_lines)
    plays = {LineKey(*k): tuple(sorted(set(v))) for k, v in (corrected_plays or {}).items()}
    stray = sorted(plays.keys() - before.keys() - after.keys())
    if stray:
        raise ValueError(f"expected corrected plays of the period's lines, got some of {stray}")
    period = (period_from_ms, period_to_ms)
    found: list[AdjustmentLine] = []
    for key in sorted(before.keys() | after.keys()):
        found.extend(_adjust(key, before.get(key), after.get(key), plays.get(key, ()), period))
    return found


def _keyed(lines: Iterable[StatementLine]) -> dict[LineKey, StatementLine]:
    keyed: dict[LineKey, StatementLine] = {}
    for line in lines:
        if line.key in keyed:
            raise ValueError(f"expected one line per key, got {'/'.join(line.key)} twice")
        keyed[line.key] = line
    return keyed


def _adjust(
    key: LineKey,
    old: StatementLine | None,
    new: StatementLine | None,
    plays: tuple[PlayKey, ...],
    period: tuple[int, int],
) -> list[AdjustmentLine]:
    if old is not None and new is not None and old.currency != new.currency:
        # Money in two currencies is never netted: reverse the old line, bill the new.
        return _adjust(key, old, None, plays, period) + _adjust(key, None, new, plays, period)
    either = new if new is not None else old
    currency = None if either is None else either.currency
    deltas = [_delta(new, old, field, currency) for field in ("impressions", "amount")]
    billable = (new.billable_plays if new else 0) - (old.billable_plays if old else 0)
    if not plays and not billable and not any(deltas):
        return []
    return [
        AdjustmentLine(
            period_from_ms=period[0],
            period_to_ms=period[1],
            **key._asdict(),
            billable_plays=billable,
            impressions=deltas[0],
            amount=deltas[1],
            currency=currency,
            plays=plays,
        )
    ]


def _delta(
    new: StatementLine | None, old: StatementLine | None, field: str, currency: str | None
) -> Decimal:
    zero = zero_amount(currency) if field == "amount" else Decimal(0)
    after = getattr(new, field) if new else zero
    before = getattr(old, field) if old else zero
    # Both amounts are on the currency's grid already, so their difference is too.
    return exact_sum([after, before.copy_negate()])


# --- statements and totals ------------------------------------------------------------


def statement(
    lines: Iterable[StatementLine],
    *,
    period_from_ms: int,
    period_to_ms: int,
    tz: str,
    status: str,
    adjustments: Iterable[AdjustmentLine] = (),
) -> Statement:
    """The statement of a period: lines and adjustments sorted, totals, rounding note, digest."""
    if status not in STATUSES:
        raise ValueError(f"expected status among {STATUSES}, got {status!r}")
    if period_from_ms >= period_to_ms:
        raise ValueError(f"expected a period's start before its end, got {period_from_ms}")
    ordered = tuple(sorted(lines, key=_line_order))
    _keyed(ordered)
    extra = tuple(sorted(adjustments, key=_line_order))
    currencies = {x.currency for x in ordered} | {x.currency for x in extra}
    return Statement(
        period_from_ms=period_from_ms,
        period_to_ms=period_to_ms,
        tz=tz,
        status=status,
        lines=ordered,
        adjustments=extra,
        supplier_totals=totals(ordered, extra, by_supplier=True),
        currency_totals=totals(ordered, extra, by_supplier=False),
        rounding_note=rounding_note(currencies),
        digest=digest(ordered, extra),
    )


# (supplier_id or None for every supplier, currency or None for lines without one)
_Scope = tuple[str | None, str | None]


def totals(
    lines: Sequence[StatementLine],
    adjusted: Sequence[AdjustmentLine] = (),
    *,
    by_supplier: bool,
) -> tuple[Totals, ...]:
    """Sums per (supplier, currency), or per currency; never across currencies."""
    groups: dict[_Scope, tuple[list[StatementLine], list[AdjustmentLine]]] = {}
    for line in lines:
        groups.setdefault(_scope(line, by_supplier), ([], []))[0].append(line)
    for adjustment in adjusted:
        groups.setdefault(_scope(adjustment, by_supplier), ([], []))[1].append(adjustment)
    order = sorted(groups, key=lambda s: (s[0] or "", s[1] is None, s[1] or ""))
    return tuple(_total(scope, *groups[scope]) for scope in order)


def _scope(item: StatementLine | AdjustmentLine, by_supplier: bool) -> _Scope:
    return (item.supplier_id if by_supplier else None, item.currency)


def _total(
    scope: _Scope,
    lines: Sequence[StatementLine],
    adjusted: Sequence[AdjustmentLine],
) -> Totals:
    supplier_id, currency = scope
    zero = zero_amount(currency)
    amount = exact_sum([zero, *(x.amount for x in lines)])
    corrections = exact_sum([zero, *(x.amount for x in adjusted)])
    reasons = {r: sum(x.failed_by_reason.get(r, 0) for x in lines) for r in REASONS}
    return Totals(
        supplier_id=supplier_id,
        currency=currency,
        **{f: sum(getattr(x, f) for x in lines) for f in _COUNTED},
        failed_by_reason=_by_reason(reasons),
        impressions=exact_sum([Decimal(0), *(x.impressions for x in lines)]),
        amount=amount,
        adjustments=corrections,
        amount_due=exact_sum([amount, corrections]),
    )


def rounding_note(currencies: Iterable[str | None]) -> str:
    """What the statement says of its arithmetic, naming the minor unit of each currency in it."""
    named = sorted(c for c in currencies if c is not None)
    units = ", ".join(f"{c} {minor_units(c)}" for c in named) or "none billed"
    return (
        "Amounts are exact: a per_play line bills billable plays × price, a cpm line "
        "impressions × price / 1000, where impressions are billable plays × the "
        "campaign's multiplier. Each line's amount is then rounded half-even (a tie "
        "goes to the even digit) to its currency's minor unit (ISO 4217 digits: "
        f"{units}). Totals are sums of the rounded lines, per currency; amounts in "
        "different currencies are never added. An adjustment is the difference of "
        "two rounded amounts."
    )


# --- finality ---------------------------------------------------------------------------


def settled_at(
    period_end_ms: int, longest_play_ms: int, skew_ms: int, offline_ms: int, grace_ms: int
) -> int:
    """When nothing recorded can still change the period: its end plus every wait.

    A play that started just before the end finishes up to the longest play
    later, its clock may be off by the skew limit, its device may hold it
    offline for the offline limit, and its screenshot may take the grace to come.
    """
    waits = (longest_play_ms, skew_ms, offline_ms, grace_ms)
    if min(waits) < 0:
        raise ValueError(f"expected waits of zero or more, got {waits}")
    return period_end_ms + sum(waits)


def finality(
    period_end_ms: int,
    now_ms: int,
    longest_play_ms: int,
    skew_ms: int,
    offline_ms: int,
    grace_ms: int,
    pending_in_period: int,
    caught_up_to_ms: int,
) -> bool:
    """Whether the period's statement is final: settled, nothing pending, everyone caught up."""
    if pending_in_period < 0:
        raise ValueError(f"expected a pending count of zero or more, got {pending_in_period}")
    at = settled_at(period_end_ms, longest_play_ms, skew_ms, offline_ms, grace_ms)
    return now_ms >= at and pending_in_period == 0 and caught_up_to_ms >= at


# --- serialization --------------------------------------------------------------------


def digest(lines: Iterable[StatementLine], adjusted: Iterable[AdjustmentLine] = ()) -> str:
    """SHA-256 (hex) of the canonical document of lines and adjustments (module docstring)."""
    document = {
        "adjustments": _canonical_list(json_ready(x) for x in adjusted),
        "lines": _canonical_list(json_ready(x) for x in lines),
    }
    return hashlib.sha256(_canonical_json(document)).hexdigest()


def _canonical_list(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    # By key, and by the whole text after it, so that even equal keys have one order.
    return sorted(items, key=lambda d: (_sort_key(d), _canonical_json(d)))


def _sort_key(item: dict[str, Any]) -> tuple[str, ...]:
    return tuple(item.get(field) or "" for field in _ORDER)


_ORDER: Final = (
    "supplier_id",
    "campaign_id",
    "ad_group_id",
    "period_from",
    "period_to",
    "currency",
)


def _canonical_json(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


def rfc3339(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds, as the reports write times."""
    # The same format as server.formats.rfc3339, which this pure layer may not import.
    second, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{millis:03d}Z"


def json_ready(item: StatementLine | AdjustmentLine | Totals) -> dict[str, Any]:
    """A line, adjustment or totals as JSON values: decimals as strings, times as RFC 3339."""
    ready: dict[str, Any] = {}
    for field in type(item).__struct_fields__:
        value = getattr(item, field)
        if field in _MONEY:
            value = money_text(value, item.currency)
        elif isinstance(value, Decimal):
            value = decimal_text(value)
        elif field.endswith("_ms"):
            field, value = field.removesuffix("_ms"), rfc3339(value)
        elif field == "plays" and isinstance(value, tuple):
            value = [play._asdict() for play in sorted(set(value))]
        elif isinstance(value, dict):
            value = _by_reason(value)
        ready[field] = value
    return ready


_MONEY: Final = ("amount", "adjustments", "amount_due")


def to_json_dict(document: Statement) -> dict[str, Any]:
    """The whole statement as JSON-ready values (what the route answers)."""
    return {
        "from": rfc3339(document.period_from_ms),
        "to": rfc3339(document.period_to_ms),
        "tz": document.tz,
        "status": document.status,
        "lines": [json_ready(x) for x in document.lines],
        "adjustments": [json_ready(x) for x in document.adjustments],
        "totals": {
            "by_supplier": [json_ready(x) for x in document.supplier_totals],
            "by_currency": [json_ready(x) for x in document.currency_totals],
        },
        "rounding": document.rounding_note,
        "digest": document.digest,
    }


def csv_row(line: StatementLine) -> list[str]:
    """A line as text in CSV_COLUMNS order: one column per failure reason, empty for None."""
    values = json_ready(line)
    reasons = values.pop("failed_by_reason")
    values |= {f"failed_{r}": reasons.get(r, 0) for r in REASONS}
    return ["" if values[c] is None else str(values[c]) for c in CSV_COLUMNS]
