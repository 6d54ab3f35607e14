"""The verification report's counts of decided plays, shared by both stores.

Decided plays are counted from `rollup_verification` (`stores/verdicts.py`)
for the whole hours of the range, and from the impression rows for the rest,
with the delivery report's plan and time keys (`queries.plan`,
`queries.time_key_sql`): hour buckets fit a zone only when its offsets are whole
hours, so a report grouped by hour or day in Asia/Kathmandu reads rows, while
one without a time group reads the rollup in any zone (the zone then only
places `from` and `to`, which are instants already).

Pending plays are not counted here: they are the delivery report's valid plays
less the decided ones (`server/verification_report.py`), so that verified,
failed and pending always add up to `valid`.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from playproof.stores import queries
from playproof.stores.base import Reader
from playproof.stores.rollup import Rollup
from playproof.stores.timezones import Pieces, offset_pieces
from playproof.stores.verdicts import BUCKET_MS, ROLLUP_COLUMNS
from playproof.verification import FAILED, REASONS, VERIFIED

# The dimensions rollup_verification keeps (the record's store, as the delivery report).
DIMENSIONS: Final = ("campaign_id", "ad_group_id", "supplier_id", "store_id", "device_id")
GROUPS: Final = ("reason", *DIMENSIONS, *queries.TIME_UNITS)
ROLLUP: Final = Rollup("rollup_verification", (*DIMENSIONS, "reason"), BUCKET_MS)
# Without the screen: what a statement (and a report by campaign) reads, first choice.
LINE_ROLLUP: Final = Rollup("rollup_verification_line", (*DIMENSIONS[:3], "reason"), BUCKET_MS)
assert ROLLUP_COLUMNS[1:6] == DIMENSIONS

# What each kind of part sums, and of what: verified and failed plays (from the rollup's
# rows of reason '', which count each play once), or failures by reason.
_STATUS_SUMS: Final = {
    "rollup": f"SUM(CASE WHEN status = '{VERIFIED}' THEN plays ELSE 0 END), "
    f"SUM(CASE WHEN status = '{FAILED}' THEN plays ELSE 0 END)",
    "rows": f"SUM(CASE WHEN verification = '{VERIFIED}' THEN 1 ELSE 0 END), "
    f"SUM(CASE WHEN verification = '{FAILED}' THEN 1 ELSE 0 END)",
}
_STATUS_WHERE: Final = {
    "rollup": "reason = ''",
    "rows": f"verification IN ('{VERIFIED}', '{FAILED}')",
}
_REASON_SUMS: Final = {"rollup": "SUM(plays)", "rows": "COUNT(*)"}
_REASON_WHERE: Final = {
    "rollup": f"status = '{FAILED}' AND reason <> ''",
    "rows": f"verification = '{FAILED}'",
}

Counts = dict[tuple[Any, ...], list[int]]


class Sql(NamedTuple):
    """One statement and its parameters."""

    text: str
    params: list[Any]


def pieces_for(query: queries.DeliveryQuery) -> Pieces:
    """The zone's offsets over the range, or none at all when no time group needs them."""
    if not set(query.group_by) & set(queries.TIME_UNITS):
        return ((query.start, 0),)
    return offset_pieces(query.zone, query.start, max(query.end, query.start + 1))


def _reasons_join(ph: str) -> tuple[str, str, list[Any]]:
    """A table `r` of every reason and its LIKE pattern (a WITH), the rows' join to it, params."""
    values = ", ".join(f"(CAST({ph} AS TEXT), CAST({ph} AS TEXT))" for _ in REASONS)
    params = [v for reason in REASONS for v in (reason, queries.reason_pattern(reason))]
    # A failed play joins each of its reasons: it counts once under each.
    join = f" JOIN r ON {queries.REASON_MATCH.format('r.pattern')}"
    return f"WITH r (reason, pattern) AS (VALUES {values}) ", join, params


def part_sql(
    query: queries.DeliveryQuery, part: queries.Part, pieces: Pieces, ph: str, by_reason: bool
) -> Sql:
    """One part's counts: the group values in `group_by` order, then the sums."""
    kind, col, table = "rows", "start_ts", "impressions"
    if part.source is not None:
        kind, col, table = "rollup", "bucket", part.source.table
    keys = [
        queries.time_key_sql(g, col, pieces) if g in queries.TIME_UNITS else g
        for g in query.group_by
    ]
    where = [f"{col} >= {int(part.start)}", f"{col} < {int(part.end)}"]
    where.append((_REASON_WHERE if by_reason else _STATUS_WHERE)[kind])
    where += [f"{name} = {ph}" for name, _ in query.filters]
    sums = (_REASON_SUMS if by_reason else _STATUS_SUMS)[kind]
    head = ""
    cte_params: list[Any] = []  # only the join to the reasons has parameters
    if by_reason and kind == "rows":
        head, join, cte_params = _reasons_join(ph)
        table += join
        keys = ["r.reason" if k == "reason" else k for k in keys]
    sql = f"{head}SELECT {', '.join([*keys, sums])} FROM {table} WHERE {' AND '.join(where)}"
    if keys:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(keys)))
    return Sql(sql, [*cte_params, *(value for _, value in query.filters)])


async def _counts(store: Reader, query: queries.DeliveryQuery, by_reason: bool) -> Counts:
    pieces = pieces_for(query)
    totals: Counts = {}
    width = len(query.group_by)
    for part in queries.plan(query, pieces, (LINE_ROLLUP, ROLLUP)):
        sql, params = part_sql(query, part, pieces, queries.placeholder(store), by_reason)
        for row in await store.read_rows(sql, params):
            values = [int(v or 0) for v in row[width:]]
            if any(values):  # no rows (NULL sums), or rollup rows an undone decision left at 0
                sums = totals.setdefault(tuple(row[:width]), [0] * len(values))
                for i, value in enumerate(values):
                    sums[i] += value
    return totals


async def decided(store: Reader, query: queries.DeliveryQuery) -> Counts:
    """Per group (no `reason` in it): [verified, failed] plays that started in the range."""
    assert "reason" not in query.group_by
    return await _counts(store, query, by_reason=False)


async def failures(store: Reader, query: queries.DeliveryQuery) -> Counts:
    """Per group (with `reason` in it): [failed plays], a play under each of its reasons."""
    assert "reason" in query.group_by
    return await _counts(store, query, by_reason=True)
