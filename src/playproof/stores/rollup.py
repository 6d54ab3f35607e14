"""Delivery rollups: per time bucket of `start_ts` and report dimensions, the sums billing reads.

Both stores keep the rollup tables in the same transaction as the impression
rows they summarize, from deltas computed here, once, from the commit plan's
rows: SQLite and PostgreSQL cannot disagree, and a report read from a rollup
equals one computed from the rows. A group commit of thousands of records
upserts a few rows per table (one per bucket and dimension values), so the
cost on the ingest path is one dictionary update per record.

The bucket widths are part of the schema (migration `0002`): changing one
needs a migration that rebuilds its table.

Each play counts at most `DURATION_CEILING_MS` of `played_ms`, whatever its row
holds (the rules bound durations now, but rows stored before the bound may
claim up to 2^53 - 1): a few thousand such plays would overflow a 64-bit sum,
failing every commit of their group on PostgreSQL and turning SQLite's sum
into an inexact REAL. Migration `0003` rebuilt the rollups with the same clamp,
and the report's reads of rows (`queries.py`) apply it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Final, NamedTuple

from playproof.rules import DURATION_CEILING_MS, HOUR_MS, MINUTE_MS
from playproof.stores.base import IMPRESSION_COLUMNS

DIMENSIONS: Final = (
    "campaign_id",
    "ad_group_id",
    "content_id",
    "supplier_id",
    "store_id",
    "device_id",
)
MEASURES: Final = ("plays", "valid", "played_ms", "quality_sum", "restarts")


class Rollup(NamedTuple):
    """One rollup table: its dimensions and the width of its time buckets."""

    table: str
    dims: tuple[str, ...]
    bucket_ms: int

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column, in the order of a delta row."""
        return ("bucket", *self.dims, *MEASURES)


# Smallest first: a report reads the first one that covers it.
ROLLUPS: Final = (
    Rollup("rollup_content", DIMENSIONS[:4], 15 * MINUTE_MS),
    Rollup("rollup_device", DIMENSIONS, HOUR_MS),
)

_COL = {name: i for i, name in enumerate(IMPRESSION_COLUMNS)}
_START, _STATUS, _DURATION = _COL["start_ts"], _COL["status"], _COL["duration_ms"]
_QUALITY, _END_REASON = _COL["quality"], _COL["end_reason"]
_GETTERS = {r: itemgetter(*(_COL[d] for d in r.dims)) for r in ROLLUPS}

Delta = tuple[Any, ...]


def _sums(rows: Iterable[Sequence[Any]], rollup: Rollup) -> dict[tuple[Any, ...], list[int]]:
    """Sums per bucket and dimension values of one rollup: one pass, one dict update a row."""
    acc: dict[tuple[Any, ...], list[int]] = {}
    get, size, dims_of, ceiling = acc.get, rollup.bucket_ms, _GETTERS[rollup], DURATION_CEILING_MS
    for row in rows:
        start = row[_START]
        key = (start - start % size, dims_of(row))
        sums = get(key)
        if sums is None:
            sums = acc[key] = [0, 0, 0, 0, 0]
        sums[0] += 1
        if row[_STATUS] == "valid":
            sums[1] += 1
        duration = row[_DURATION]
        sums[2] += duration if duration <= ceiling else ceiling
        sums[3] += row[_QUALITY]
        if row[_END_REASON] == "device_restart":
            sums[4] += 1
    return acc


Sums = dict[Rollup, dict[tuple[Any, ...], list[int]]]


def rollup_sums(rows: Sequence[Sequence[Any]]) -> Sums:
    """Per rollup, the sums per bucket and dimension values of these impression rows."""
    return {rollup: _sums(rows, rollup) for rollup in ROLLUPS} if rows else {}


def merge_sums(parts: Iterable[Sums]) -> Sums:
    """The sums of several groups of rows, as if they had been summed together."""
    merged: Sums = {}
    for part in parts:
        for rollup, sums in part.items():
            into = merged.setdefault(rollup, {})
            for key, values in sums.items():
                have = into.get(key)
                if have is None:
                    into[key] = list(values)
                else:
                    into[key] = [a + b for a, b in zip(have, values, strict=True)]
    return merged


def deltas(sums: Sums) -> dict[Rollup, list[Delta]]:
    """Per rollup, the rows to add (bucket, dimensions, measures)."""
    # Sorted, so that concurrent PostgreSQL commits lock rollup rows in one order.
    return {
        rollup: sorted((bucket, *dims, *values) for (bucket, dims), values in by_key.items())
        for rollup, by_key in sums.items()
    }


def rollup_deltas(rows: Sequence[Sequence[Any]]) -> dict[Rollup, list[Delta]]:
    """Per rollup, the rows to add (bucket, dimensions, measures) for these impression rows."""
    return deltas(rollup_sums(rows))


def _keys(rollup: Rollup) -> str:
    return ", ".join(("bucket", *rollup.dims))


def sqlite_upsert(rollup: Rollup) -> tuple[str, str]:
    """SQLite: the head and tail of an upsert adding delta rows to their rollup rows."""
    sets = ", ".join(f"{m} = {m} + excluded.{m}" for m in MEASURES)
    head = f"INSERT INTO {rollup.table} ({', '.join(rollup.columns)})"
    return head, f"ON CONFLICT ({_keys(rollup)}) DO UPDATE SET {sets}"


def postgres_upsert(rollup: Rollup) -> str:
    """PostgreSQL: add every delta in one statement, one array per column, in the order given."""
    cols = rollup.columns
    types = ["bigint", *("text" for _ in rollup.dims), *("bigint" for _ in MEASURES)]
    aliases = [f"c{i}" for i in range(len(cols))]
    sets = ", ".join(f"{m} = r.{m} + excluded.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {rollup.table} AS r ({', '.join(cols)}) "
        f"SELECT {', '.join(aliases)} FROM unnest("
        + ", ".join(f"%s::{t}[]" for t in types)
        + f") WITH ORDINALITY AS u({', '.join(aliases)}, n) ORDER BY n "
        f"ON CONFLICT ({_keys(rollup)}) DO UPDATE SET {sets}"
    )
