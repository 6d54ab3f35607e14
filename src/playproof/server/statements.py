"""The billing statement: counted by the reports, priced by `billing`, final once settled.

`GET /v1/reports/billing`, `playproof report billing` and the printable page all
read `billing_statement`, so they show the same document.

Counting. One line per (supplier, campaign, ad group) of plays that started in
[from, to): `plays`, `valid` and `partial` are the delivery report's
(`queries.delivery`), `verified`, `failed` and the failures by reason the
verification report's (`verification_report.decided` and `failures`), and
`pending` is valid − verified − failed, as that report computes it. They are
read in one `statement_snapshot`, with the catalog (retired campaigns included,
so that a retired campaign's plays are still priced), the verifier's oldest
pending play and the verification log's last id, so that all of them agree to
the play.

Finality. A statement is `provisional` until `billing.finality` holds on the
service's clock: its period has ended and the longest play, the skew limit, the
offline limit and the screenshot grace have passed since (`settles_at`), none of
its plays is pending, and no play received before `settles_at` is pending
anywhere (the verifier has caught up). The first request that finds it so makes
it `final`: the document is kept and answered byte for byte ever after, never
counted again.

Adjustments: "the next statement". A statement carries an adjustment for every
final statement with the same filters whose period ended by its start, whose
recount now bills differently from what was last billed for it, and none of
whose plays is pending (plays being decided again, after a catalog change, are
adjusted once decided). A provisional statement shows them; a final one bills
them, and in the transaction that keeps it moves those statements' billed lines
to the recount (`stores/statements.py`), so that each correction is billed on
exactly one final statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any, Final, NamedTuple

import msgspec

from playproof import billing
from playproof.billing import AdjustmentLine, LineKey, PlayCounts, PlayKey, StatementLine
from playproof.catalog import CatalogIndex, index
from playproof.errors import Conflict
from playproof.rules import Policy
from playproof.server.params import Params, time_range, zone
from playproof.server.reports import Query
from playproof.stores import queries
from playproof.stores import statements as kept
from playproof.stores import verification_queries as vq
from playproof.stores import verification_report as vr
from playproof.stores.base import Reader, Store
from playproof.stores.statements import Billed, FinalStatement, Rebase, StatementKey
from playproof.stores.verdicts import CatalogState
from playproof.verification import VERIFIED

PARAMS: Final = ("from", "to", "tz", "supplier_id", "campaign_id")
FILTERS: Final = ("supplier_id", "campaign_id")
LINE_GROUPS: Final = ("supplier_id", "campaign_id", "ad_group_id")
# Counting again after another request adjusted the same statements first; each
# try is one snapshot, so a few are plenty unless statements turn final in a storm.
ATTEMPTS: Final = 5

_lines_type: Final = list[StatementLine]


def statement_key(query: Query) -> StatementKey:
    """The statement a request asks for: `from`, `to` (required), `tz`, the two filters."""
    params = Params(query, PARAMS)
    tz = zone(params.get("tz"))
    start, end = time_range(params, tz, required=True)
    assert start is not None and end is not None
    filters = dict(params.ids(FILTERS))
    tz_name = "UTC" if tz is UTC else str(params.get("tz"))
    return StatementKey(
        start, end, tz_name, filters.get("supplier_id", ""), filters.get("campaign_id", "")
    )


async def billing_statement(store: Store, query: Query, now: int, policy: Policy) -> bytes:
    """The JSON document of the statement a request asks for (final ones as stored)."""
    return await statement_document(store, statement_key(query), now, policy)


async def statement_document(store: Store, key: StatementKey, now: int, policy: Policy) -> bytes:
    """A statement's document at `now`: as stored once final, else counted now."""
    for _ in range(ATTEMPTS):
        # Outside the snapshot: a kept statement is answered without holding anyone up.
        stored = await kept.stored_document(store, key)
        if stored is not None:
            return stored.encode()
        async with store.statement_snapshot() as reader:
            counted = await _count(reader, key)
        built = build(key, counted, now, policy)
        if built.final is None:
            return built.document
        try:
            return (await store.save_statement(built.final, built.rebased)).encode()
        except Conflict:
            continue  # another statement adjusted the same ones first: count again
    raise Conflict(
        f"statement {key.label()}: other statements kept adjusting the same periods; "
        "ask again in a moment"
    )


# --- counting (inside one snapshot) -------------------------------------------------


async def play_counts(
    reader: Reader, start: int, end: int, filters: queries.Filters = ()
) -> list[PlayCounts]:
    """Per (supplier, campaign, ad group): the delivery and verification reports' counts."""
    wanted = queries.DeliveryQuery(start, end, LINE_GROUPS, filters)
    delivered = {row.key: row for row in await queries.delivery(reader, wanted)}
    decided = await vr.decided(reader, wanted)
    by_reason: dict[tuple[Any, ...], dict[str, int]] = {}
    failures = await vr.failures(reader, wanted._replace(group_by=(*LINE_GROUPS, "reason")))
    for (*line, reason), (n,) in failures.items():
        by_reason.setdefault(tuple(line), {})[reason] = n
    counts = []
    for key in sorted(delivered.keys() | decided.keys()):
        row = delivered.get(key)
        plays, valid = (row.plays, row.valid) if row else (0, 0)
        verified, failed = decided.get(key, (0, 0))
        counts.append(
            PlayCounts(
                **LineKey(*key)._asdict(),
                plays=plays,
                valid=valid,
                partial=plays - valid,
                verified=verified,
                failed=failed,
                failed_by_reason=by_reason.get(key, {}),
                pending=valid - verified - failed,
            )
        )
    return counts


def pricing(state: CatalogState) -> CatalogIndex:
    """The catalog a statement prices with: active entries, and retired campaigns too."""
    retired = [campaign for campaign, _ in state.retired.values()]
    campaigns = [*state.catalog.campaigns, *retired]
    return index(msgspec.structs.replace(state.catalog, campaigns=campaigns))


class Counted(NamedTuple):
    """What one snapshot says of a statement: its lines, adjustments, and the marks."""

    lines: list[StatementLine]
    adjustments: list[AdjustmentLine]
    rebased: list[Rebase]
    mark: int
    oldest_pending: int | None


async def _count(reader: Reader, key: StatementKey) -> Counted:
    priced = pricing(await kept.catalog(reader))
    counts = await play_counts(reader, key.period_from, key.period_to, key.filters)
    mark = await kept.log_mark(reader)
    adjusted: list[AdjustmentLine] = []
    rebased: list[Rebase] = []
    for earlier in await kept.billed_before(reader, key):
        found = await _adjust(reader, earlier, priced, mark)
        if found is not None:
            adjusted += found[0]
            rebased.append(found[1])
    oldest = await vq.oldest_pending(reader)
    return Counted(billing.statement_lines(counts, priced), adjusted, rebased, mark, oldest)


async def _adjust(
    reader: Reader, earlier: Billed, priced: CatalogIndex, mark: int
) -> tuple[list[AdjustmentLine], Rebase] | None:
    """What a final statement's recount adds to what was billed for it, if anything yet."""
    period = earlier.key
    counts = await play_counts(reader, period.period_from, period.period_to, period.filters)
    now = billing.statement_lines(counts, priced)
    if any(line.pending for line in now):
        return None  # being decided again: adjusted once the decisions are in
    was = msgspec.json.decode(earlier.lines, type=_lines_type)
    if not _adjustments(earlier, was, now, {}):
        return None
    # Its numbers moved: name the plays decided otherwise since it was billed (the log
    # drives this read, so it is only paid for when there is something to bill).
    corrected = await corrected_plays(reader, earlier)
    return _adjustments(earlier, was, now, corrected), Rebase(earlier, lines_json(now), mark)


def _adjustments(
    earlier: Billed,
    was: list[StatementLine],
    now: list[StatementLine],
    corrected: dict[LineKey, list[PlayKey]],
) -> list[AdjustmentLine]:
    period = earlier.key
    return billing.adjustments(
        was,
        now,
        period_from_ms=period.period_from,
        period_to_ms=period.period_to,
        corrected_plays=corrected,
    )


async def corrected_plays(reader: Reader, earlier: Billed) -> dict[LineKey, list[PlayKey]]:
    """Plays of a billed period verified then and not now, or now and not then."""
    period = earlier.key
    found: dict[LineKey, list[PlayKey]] = {}
    span = (period.period_from, period.period_to, period.filters, earlier.mark)
    for play in await kept.redecided(reader, *span):
        if (play.then == VERIFIED) != (play.now == VERIFIED):
            found.setdefault(LineKey(*play.line), []).append(PlayKey(*play.play))
    return found


# --- the document -------------------------------------------------------------------


class Built(NamedTuple):
    """A statement's document; the statement to keep and the moves it makes, when final."""

    document: bytes
    final: FinalStatement | None
    rebased: list[Rebase]


def waits(policy: Policy) -> tuple[int, int, int, int]:
    """The longest play, skew limit, offline limit and screenshot grace, in that order."""
    return (
        policy.max_duration_ms,
        policy.skew_reject_ms,
        policy.offline_limit_ms,
        policy.screenshot_grace_ms,
    )


def build(key: StatementKey, counted: Counted, now: int, policy: Policy) -> Built:
    """The statement at `now`, final or provisional, as its JSON document."""
    pending = sum(line.pending for line in counted.lines)
    # The verifier has decided everything received before its oldest pending play.
    caught_up = now if counted.oldest_pending is None else counted.oldest_pending
    final = billing.finality(key.period_to, now, *waits(policy), pending, caught_up)
    statement = billing.statement(
        counted.lines,
        period_from_ms=key.period_from,
        period_to_ms=key.period_to,
        tz=key.tz,
        status=billing.FINAL if final else billing.PROVISIONAL,
        adjustments=counted.adjustments,
    )
    settles = billing.settled_at(key.period_to, *waits(policy))
    document = to_document(statement, key, settles, now if final else None)
    if not final:
        return Built(document, None, [])
    billed = Billed(key, lines_json(counted.lines), counted.mark)
    kept_as = FinalStatement(key, document.decode(), statement.digest, now, billed)
    return Built(document, kept_as, counted.rebased)


def to_document(
    statement: billing.Statement, key: StatementKey, settles: int, finalized: int | None
) -> bytes:
    """`billing.to_json_dict`, with the filters, when it settles and when it turned final."""
    doc = billing.to_json_dict(statement)
    doc["filters"] = {
        "supplier_id": key.supplier_id or None,
        "campaign_id": key.campaign_id or None,
    }
    doc["settles_at"] = billing.rfc3339(settles)
    doc["finalized_at"] = None if finalized is None else billing.rfc3339(finalized)
    return msgspec.json.encode(doc)


def lines_json(lines: Sequence[StatementLine]) -> str:
    """Lines as kept for later adjustments (decimals as strings, exact)."""
    return msgspec.json.encode(list(lines)).decode()


def document_lines(document: dict[str, Any]) -> list[StatementLine]:
    """A document's lines back as StatementLines (for CSV: `billing.csv_row`)."""
    return msgspec.convert(document["lines"], _lines_type)
