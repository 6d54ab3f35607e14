"""Operators' queries, shared by both stores: the SQL is built here, the store runs it.

The delivery report reads the smallest rollup (`stores/rollup.py`) that holds
the dimensions asked for and whose buckets fit the time zone; the parts of the
range that do not fill a whole bucket, and zones no rollup fits, are read from
the impression rows themselves, with the same arithmetic. Both stores run the
same text (only the placeholder differs), so they answer alike.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, tzinfo
from itertools import pairwise
from typing import Any, Final, NamedTuple

from playproof.rules import DURATION_CEILING_MS, HOUR_MS
from playproof.stores.base import Reader, RejectInfo, Store
from playproof.stores.rollup import DIMENSIONS, ROLLUPS, Rollup
from playproof.stores.timezones import Pieces, offset_pieces

DAY_MS: Final = 24 * HOUR_MS
TIME_UNITS: Final = {"hour": HOUR_MS, "day": DAY_MS}
GROUPS: Final = (*DIMENSIONS, "hour", "day")
# Added before an integer division so that it floors for any time at or after the
# epoch whatever the offset (SQL's division truncates toward zero).
_FLOOR: Final = DAY_MS

IMPRESSION_KEY: Final = ("start_ts", "device_id", "journal_id", "seq")
LISTED_COLUMNS: Final = (
    "device_id",
    "journal_id",
    "seq",
    "campaign_id",
    "ad_group_id",
    "content_id",
    "store_id",
    "supplier_id",
    "start_ts",
    "end_ts",
    "duration_ms",
    "expected_ms",
    "end_reason",
    "clock_offset_ms",
    "clock_synced",
    "screenshot_sha256",
    "screenshot_at_ms",
    "checksum",
    "status",
    "quality",
    "flags",
    "verification",
    "verification_reasons",
    "received_at",
    "skew_ms",
)
# For CSV exports: the eight leading text columns joined in the database, one
# string instead of eight objects a row (none of them can hold a comma).
JOINED_IDS: Final = " || ',' || ".join(LISTED_COLUMNS[:8])
CSV_COLUMNS: Final = (JOINED_IDS, *LISTED_COLUMNS[8:])
IMPRESSION_FILTERS: Final = (
    *DIMENSIONS,
    "journal_id",
    "status",
    "end_reason",
    "verification",
    "verification_reason",
)
# A play's stored reasons (`verification_reasons`, comma-separated) hold a reason when
# `,reasons,` contains `,reason,`: a whole reason, never part of another. `_` is a LIKE
# wildcard, so it is escaped (with `!`: backslashes read differently in the dialects).
REASON_MATCH: Final = "(',' || verification_reasons || ',') LIKE {} ESCAPE '!'"
# A reject as operators read it: RejectInfo's fields (what the store wrote, plus id and times).
REJECT_COLUMNS: Final = RejectInfo._fields

Filters = tuple[tuple[str, str], ...]


def placeholder(store: Reader) -> str:
    """The parameter placeholder of the store's dialect."""
    return "%s" if store.dialect == "postgres" else "?"


# --- the delivery report ---------------------------------------------------------


class DeliveryQuery(NamedTuple):
    """A delivery report: the range of `start_ts` [start, end), groups, filters, time zone."""

    start: int
    end: int
    group_by: tuple[str, ...] = ()
    filters: Filters = ()
    zone: tzinfo = UTC


class DeliveryRow(NamedTuple):
    """One group's sums; `key` follows `group_by` (for time groups see `time_key_sql`)."""

    key: tuple[Any, ...]
    plays: int
    valid: int
    played_ms: int
    quality_sum: int


class Part(NamedTuple):
    """A stretch of the range and where it is read: a rollup, or the rows (None)."""

    source: Rollup | None
    start: int
    end: int


def _aligned(bucket_ms: int, pieces: Pieces) -> bool:
    """Whether every bucket lies within one local hour (offsets and changes fit the buckets)."""
    return all(off % bucket_ms == 0 for _, off in pieces) and all(
        since % bucket_ms == 0 for since, _ in pieces[1:]
    )


def plan(query: DeliveryQuery, pieces: Pieces, rollups: Sequence[Rollup] = ROLLUPS) -> list[Part]:
    """Where each stretch of the range is read: whole buckets from a rollup, the rest from rows."""
    needed = {g for g in query.group_by if g not in TIME_UNITS} | {f for f, _ in query.filters}
    for rollup in rollups:
        if needed <= set(rollup.dims) and _aligned(rollup.bucket_ms, pieces):
            size = rollup.bucket_ms
            lo, hi = -(-query.start // size) * size, query.end // size * size
            if lo >= hi:
                break
            parts = [Part(None, query.start, lo), Part(rollup, lo, hi), Part(None, hi, query.end)]
            return [p for p in parts if p.start < p.end]
    return [Part(None, query.start, query.end)] if query.start < query.end else []


def _offset_sql(col: str, pieces: Pieces) -> str:
    if len(pieces) == 1:
        return str(int(pieces[0][1]))
    arms = " ".join(
        f"WHEN {col} < {int(since)} THEN {int(before)}"
        for (_, before), (since, _) in pairwise(pieces)
    )
    return f"(CASE {arms} ELSE {int(pieces[-1][1])} END)"


def time_key_sql(unit: str, col: str, pieces: Pieces) -> str:
    """SQL for a time group of `col`: hour → its first instant; day → the local midnight as UTC."""
    # Both in epoch ms: an hour by the instant it starts (distinct even when a clock
    # goes back), a day by its local midnight read as if it were UTC (the date itself).
    off = _offset_sql(col, pieces)
    size = TIME_UNITS[unit]
    local = f"(({col} + {off} + {_FLOOR}) / {size} * {size} - {_FLOOR})"
    return local if unit == "day" else f"({local} - {off})"


_ROLLUP_SUMS: Final = "SUM(plays), SUM(valid), SUM(played_ms), SUM(quality_sum)"
# Each play's duration clamped as the rollups clamp it (`stores/rollup.py`): rows stored
# before durations were bounded may hold up to 2^53 - 1, and SQLite's SUM raises
# "integer overflow" past 64 bits; clamped, a sum stays exact and in range.
_CLAMPED_DURATION: Final = (
    f"CASE WHEN duration_ms > {DURATION_CEILING_MS} THEN {DURATION_CEILING_MS} ELSE duration_ms END"
)
_ROW_SUMS: Final = (
    "COUNT(*), SUM(CASE WHEN status = 'valid' THEN 1 ELSE 0 END), "
    f"SUM({_CLAMPED_DURATION}), SUM(quality)"
)


def part_sql(query: DeliveryQuery, part: Part, pieces: Pieces, ph: str) -> tuple[str, list[Any]]:
    """One part's grouped sums: the group values in `group_by` order, then the four sums."""
    col = "start_ts" if part.source is None else "bucket"
    table = "impressions" if part.source is None else part.source.table
    sums = _ROW_SUMS if part.source is None else _ROLLUP_SUMS
    keys = [time_key_sql(g, col, pieces) if g in TIME_UNITS else g for g in query.group_by]
    where = [f"{col} >= {int(part.start)}", f"{col} < {int(part.end)}"]
    where += [f"{name} = {ph}" for name, _ in query.filters]
    sql = f"SELECT {', '.join([*keys, sums])} FROM {table} WHERE {' AND '.join(where)}"
    if keys:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(keys)))
    return sql, [value for _, value in query.filters]


async def delivery(store: Reader, query: DeliveryQuery) -> list[DeliveryRow]:
    """The delivery report: per group, plays, valid plays, played ms and quality sum, sorted."""
    pieces = offset_pieces(query.zone, query.start, max(query.end, query.start + 1))
    totals: dict[tuple[Any, ...], list[int]] = {}
    width = len(query.group_by)
    for part in plan(query, pieces):
        sql, params = part_sql(query, part, pieces, placeholder(store))
        for row in await store.read_rows(sql, params):
            if not row[width]:
                continue  # no rows at all: the sums are NULL
            sums = totals.setdefault(tuple(row[:width]), [0, 0, 0, 0])
            for i, value in enumerate(row[width:]):
                sums[i] += int(value)
    return [DeliveryRow(key, *sums) for key, sums in sorted(totals.items())]


# --- impressions: pages and exports ------------------------------------------------


class ImpressionQuery(NamedTuple):
    """Which impressions: `start_ts` in [start, end), equal fields, after a key, at most limit."""

    start: int | None = None
    end: int | None = None
    filters: Filters = ()
    after: tuple[int, str, str, int] | None = None
    limit: int | None = None


def reason_pattern(reason: str) -> str:
    """The LIKE pattern of REASON_MATCH for one reason."""
    return "%," + reason.replace("!", "!!").replace("_", "!_").replace("%", "!%") + ",%"


def impressions_sql(
    query: ImpressionQuery, ph: str, columns: Sequence[str] = LISTED_COLUMNS
) -> tuple[str, list[Any]]:
    """The impressions asked for, in key order: (start_ts, device_id, journal_id, seq)."""
    where: list[str] = []
    params: list[Any] = []
    if query.start is not None:
        where.append(f"start_ts >= {int(query.start)}")
    if query.end is not None:
        where.append(f"start_ts < {int(query.end)}")
    for name, value in query.filters:
        if name == "verification_reason":
            where.append(REASON_MATCH.format(ph))
            params.append(reason_pattern(value))
        else:
            where.append(f"{name} = {ph}")
            params.append(value)
    if query.after is not None:
        where.append(f"({', '.join(IMPRESSION_KEY)}) > ({', '.join([ph] * 4)})")
        params.extend(query.after)
    sql = f"SELECT {', '.join(columns)} FROM impressions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {', '.join(IMPRESSION_KEY)}"
    if query.limit is not None:
        sql += f" LIMIT {int(query.limit)}"
    return sql, params


async def impressions(store: Store, query: ImpressionQuery) -> list[tuple[Any, ...]]:
    """One page of impressions, as rows in LISTED_COLUMNS order."""
    sql, params = impressions_sql(query, placeholder(store))
    return await store.read_rows(sql, params)


def export_impressions(
    store: Store,
    query: ImpressionQuery,
    columns: Sequence[str] = LISTED_COLUMNS,
    chunk: int = 10_000,
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    """Every impression asked for, in chunks, from one snapshot."""
    sql, params = impressions_sql(query, placeholder(store), columns)
    return store.stream_rows(sql, params, chunk)


def screenshot_sql(store: Store) -> str:
    """The screenshot hash and media type of one impression, by its key."""
    ph = placeholder(store)
    where = f"i.device_id = {ph} AND i.journal_id = {ph} AND i.seq = {ph}"
    if store.dialect == "postgres":
        # The key table knows the partition: prune to it instead of probing every day.
        where += (
            " AND i.start_ts = (SELECT k.start_ts FROM impression_keys k WHERE "
            f"k.device_id = {ph} AND k.journal_id = {ph} AND k.seq = {ph})"
        )
    return (
        "SELECT i.screenshot_sha256, s.content_type FROM impressions i "
        f"LEFT JOIN screenshots s ON s.sha256 = i.screenshot_sha256 WHERE {where}"
    )


async def screenshot_of(
    store: Store, device_id: str, journal_id: str, seq: int
) -> tuple[str | None, str | None] | None:
    """(sha256, media type) of an impression's screenshot; None when no such impression."""
    key = (device_id, journal_id, seq)
    params = key * 2 if store.dialect == "postgres" else key
    rows = await store.read_rows(screenshot_sql(store), params)
    return (rows[0][0], rows[0][1]) if rows else None


# --- rejects ----------------------------------------------------------------------


class RejectQuery(NamedTuple):
    """Which rejects: `received_at` in [start, end), equal fields, ids below `before`."""

    start: int | None = None
    end: int | None = None
    filters: Filters = ()
    before: int | None = None
    limit: int = 100


def _reject_where(query: RejectQuery, ph: str) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    if query.start is not None:
        where.append(f"received_at >= {int(query.start)}")
    if query.end is not None:
        where.append(f"received_at < {int(query.end)}")
    if query.before is not None:
        where.append(f"id < {int(query.before)}")
    where += [f"{name} = {ph}" for name, _ in query.filters]
    return where, [value for _, value in query.filters]


async def rejects(store: Store, query: RejectQuery) -> list[tuple[Any, ...]]:
    """Rejected records, newest first, as rows in REJECT_COLUMNS order."""
    where, params = _reject_where(query, placeholder(store))
    sql = f"SELECT {', '.join(REJECT_COLUMNS)} FROM rejects"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id DESC LIMIT {int(query.limit)}"
    return await store.read_rows(sql, params)


async def reject_counts(
    store: Store, query: RejectQuery, group_by: Sequence[str], zone: tzinfo = UTC
) -> list[tuple[Any, ...]]:
    """Per group (`reason`, `submitted_by`, `hour`, `day` of `received_at`): rows, times."""
    where, params = _reject_where(query, placeholder(store))
    start = query.start or 0
    pieces = offset_pieces(zone, start, max(query.end or start + 1, start + 1))
    keys = [time_key_sql(g, "received_at", pieces) if g in TIME_UNITS else g for g in group_by]
    sql = f"SELECT {', '.join([*keys, 'COUNT(*)', 'SUM(times)'])} FROM rejects"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(keys)))
    rows = await store.read_rows(sql, params)
    return sorted((*row[: len(keys)], int(row[-2]), int(row[-1] or 0)) for row in rows if row[-2])


async def replay_candidates(
    store: Store, reason: str, since: int, after_id: int, limit: int
) -> list[tuple[Any, ...]]:
    """Rejects of `reason` received since `since`, never replayed, by id after `after_id`.

    Rows: (id, submitted_by, seq, raw, sent_at, received_at).
    """
    ph = placeholder(store)
    sql = (
        "SELECT id, submitted_by, seq, raw, sent_at, received_at FROM rejects "
        f"WHERE reason = {ph} AND received_at >= {ph} AND id > {ph} AND replayed_at IS NULL "
        f"ORDER BY id LIMIT {int(limit)}"
    )
    return await store.read_rows(sql, (reason, since, after_id))


# --- devices ----------------------------------------------------------------------


async def statuses(store: Store) -> list[tuple[str, int, str, int]]:
    """Every device's latest status: (device_id, received_at, payload JSON, evicted_total)."""
    payload = "payload::text" if store.dialect == "postgres" else "payload"
    rows = await store.read_rows(
        f"SELECT device_id, received_at, {payload}, evicted_total FROM device_status"
    )
    return [(r[0], int(r[1]), str(r[2]), int(r[3])) for r in rows]


async def evicted_ranges(store: Store) -> dict[str, list[tuple[str, int, int]]]:
    """Per device, the ranges it reported evicted: (journal_id, first_seq, last_seq)."""
    rows = await store.read_rows("SELECT device_id, journal_id, first_seq, last_seq FROM evictions")
    found: dict[str, list[tuple[str, int, int]]] = {}
    for device, journal, first, last in rows:
        found.setdefault(str(device), []).append((str(journal), int(first), int(last)))
    return found


DEVICE_ROLLUP: Final = next(r for r in ROLLUPS if "device_id" in r.dims)


async def restarts_since(store: Store, since_ms: int) -> dict[str, int]:
    """Per device, the plays closed by a device restart that started since `since_ms`."""
    size = DEVICE_ROLLUP.bucket_ms
    rows = await store.read_rows(
        f"SELECT device_id, SUM(restarts) FROM {DEVICE_ROLLUP.table} "
        f"WHERE bucket >= {int(since_ms // size * size)} GROUP BY device_id"
    )
    return {str(device): int(n) for device, n in rows if n}
