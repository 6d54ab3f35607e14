"""The verification report: per group, valid plays verified, failed and still pending, or why.

Without `reason` in `group_by`, each group has `valid` (the delivery report's
own count, for the same groups and period), `verified`, `failed` and
`pending` = valid - verified - failed, so that the three always add up to the
delivery report's `valid`. With `reason`, each group has one row per failure
reason with `failed`: a play that failed for several reasons counts once under
each, so those rows can add up to more than the plays that failed (the meta's
`totals` gives both). The HTTP route and `playproof report verification` both
call `verification`.
"""

from __future__ import annotations

from typing import Any, Final

from playproof.server import reports
from playproof.server.formats import rfc3339
from playproof.server.reports import Query, Table, group_label
from playproof.stores import queries
from playproof.stores import verification_report as vr
from playproof.stores.base import Store
from playproof.verification import REASONS

PARAMS: Final = ("from", "to", "tz", "group_by", *vr.DIMENSIONS, "format")
STATUS_SUMS: Final = ("valid", "verified", "failed", "pending")
REASON_SUMS: Final = ("failed",)
COUNTING: Final = (
    "a play that failed for several reasons counts once under each, so `failed` summed "
    "over reasons can exceed the plays that failed"
)
_ORDER: Final = {reason: i for i, reason in enumerate(REASONS)}


def verification_query(query: Query) -> tuple[queries.DeliveryQuery, str]:
    """The report a request asks for (as the delivery report's query), and its zone's name."""
    return reports.period_query(query, PARAMS, vr.GROUPS, vr.DIMENSIONS)


def _sort_key(groups: tuple[str, ...], key: tuple[Any, ...]) -> tuple[Any, ...]:
    # Reasons in their table's order (the order a play's reasons are stored in).
    return tuple(_ORDER[v] if g == "reason" else v for g, v in zip(groups, key, strict=True))


def _labels(groups: tuple[str, ...], key: tuple[Any, ...]) -> list[Any]:
    return [group_label(name, value) for name, value in zip(groups, key, strict=True)]


Rows = list[list[Any]]


async def _by_status(store: Store, wanted: queries.DeliveryQuery) -> tuple[Rows, dict[str, Any]]:
    # Decided plays first, then valid ones: a play committed or decided between the two
    # reads can only add to `valid`, never leave `pending` below zero.
    decided = await vr.decided(store, wanted)
    valid = {row.key: row.valid for row in await queries.delivery(store, wanted)}
    rows = []
    for key in sorted(set(valid) | set(decided)):
        plays, (verified, failed) = valid.get(key, 0), decided.get(key, (0, 0))
        if plays or verified or failed:  # a group of partial plays only has nothing to verify
            sums = [plays, verified, failed, plays - verified - failed]
            rows.append([*_labels(wanted.group_by, key), *sums])
    width = len(wanted.group_by)
    totals = {name: sum(row[width + i] for row in rows) for i, name in enumerate(STATUS_SUMS)}
    return rows, totals


async def _by_reason(store: Store, wanted: queries.DeliveryQuery) -> tuple[Rows, dict[str, Any]]:
    found = await vr.failures(store, wanted)
    keys = sorted(found, key=lambda key: _sort_key(wanted.group_by, key))
    rows = [[*_labels(wanted.group_by, key), found[key][0]] for key in keys]
    plays = await vr.decided(store, wanted._replace(group_by=()))
    totals = {"failures": sum(row[-1] for row in rows), "failed_plays": plays.get((), [0, 0])[1]}
    return rows, totals


async def verification(store: Store, query: Query) -> Table:
    """The verification report of a request: by status, or failures by reason."""
    wanted, tz_name = verification_query(query)
    by_reason = "reason" in wanted.group_by
    rows, totals = await (_by_reason if by_reason else _by_status)(store, wanted)
    meta = {
        "from": rfc3339(wanted.start),
        "to": rfc3339(wanted.end),
        "tz": tz_name,
        "group_by": list(wanted.group_by),
        "totals": totals,
        **({"counting": COUNTING} if by_reason else {}),
    }
    columns = (*wanted.group_by, *(REASON_SUMS if by_reason else STATUS_SUMS))
    return Table(columns, rows, meta)
