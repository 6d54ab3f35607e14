"""The PostgreSQL commit transaction: lock journals, look up stored keys, write the plan.

Concurrency (several service nodes, several commit lanes each): every record
whose key is tracked belongs to a journal, and a commit first locks the rows
of all its journals, in sorted order, creating the ones that are new, in one
statement. Whoever holds a journal's lock is the only writer of its keys, its
gaps and its high-water mark until it commits, so the checksums and state read
next are the truth, and the shared `plan_commit` decides from them exactly as
on SQLite. A second node receiving the same record waits for the first to
commit, then reads its key and answers `duplicate`. Sorted lock order means
two commits never wait on each other in a cycle.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from playproof.protocol import Ack, Record
from playproof.rules import Gap, SequenceChange, SequenceState, key_trusted
from playproof.stores import postgres_sql as q
from playproof.stores.base import (
    IMPRESSION_COLUMNS,
    REJECT_COLUMNS,
    BatchWrite,
    JournalKey,
    Key,
    gap_window,
    needs_lookup,
    sequence_changes,
    tracked_keys,
)
from playproof.stores.draft import plan_group
from playproof.stores.rollup import ROLLUPS, Delta, Rollup, postgres_upsert

_COPY_TYPES = [q.IMPRESSION_TYPES[c] for c in IMPRESSION_COLUMNS]
_KEY_POSITIONS = [IMPRESSION_COLUMNS.index(c) for c in q.KEY_COLUMNS]
_R = {name: i for i, name in enumerate(REJECT_COLUMNS)}
_KEY = [_R[name] for name in ("device_id", "journal_id", "seq", "checksum", "reason")]
_REASON, _DETAIL, _RAW, _RECEIVED = _R["reason"], _R["detail"], _R["raw"], _R["received_at"]


def start_times(writes: Sequence[BatchWrite]) -> list[int]:
    """The start times of the records that may be stored (to have their partitions ready)."""
    return [
        item.start_ts
        for write in writes
        for item, verdict in write.judged
        if isinstance(item, Record) and verdict.accepted
    ]


async def commit(
    conn: AsyncConnection, writes: Sequence[BatchWrite], max_open_gaps: int
) -> list[list[Ack]]:
    """Commit a group of batches in one transaction on `conn`; return each batch's acks.

    BEGIN travels with the journal locks and COMMIT with the last writes, in
    pipelines: a commit costs two round trips fewer than with a transaction
    block, which matters when the event loop is busy between them.
    """
    keys = dict(sorted(tracked_keys(writes).items()))
    now = max(w.received_at for w in writes)
    try:
        states = await _begin_and_lock(conn, keys, now)
        existing = await _lookup(conn, keys, states)
        plan, rollups = plan_group(writes, existing)
        await _copy_impressions(conn, plan.impressions)
        async with conn.pipeline():
            await _write_rejects(conn, plan.rejects)
            changes = sequence_changes(plan.arrivals, states, max_open_gaps)
            await _write_sequences(conn, changes, now)
            await _write_rollups(conn, rollups)
            await conn.execute("COMMIT")
    except BaseException:
        await _rollback(conn)
        raise
    return plan.acks


async def _rollback(conn: AsyncConnection) -> None:
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")


async def _begin_and_lock(
    conn: AsyncConnection, keys: dict[JournalKey, list[int]], now: int
) -> dict[JournalKey, SequenceState]:
    """BEGIN, then create and lock the group's journals; their state once locked."""
    async with conn.pipeline():
        await conn.execute("BEGIN")
        if not keys:
            return {}
        params = {"now": now, "devices": [d for d, _ in keys], "journals": [j for _, j in keys]}
        cur = await conn.execute(q.LOCK_JOURNALS, params)
    # A journal just created holds (0, 0): exactly the state of one never seen.
    return {
        (d, j): SequenceState(hw, hw_ts, (), count, suspect)
        for d, j, hw, hw_ts, count, suspect in await cur.fetchall()
    }


async def _lookup(
    conn: AsyncConnection,
    keys: dict[JournalKey, list[int]],
    states: dict[JournalKey, SequenceState],
) -> dict[Key, str]:
    """Stored checksums of the sequences that may be stored; the gaps arrivals reach into
    `states` (never all of a journal's: stores.base.gap_window)."""
    wanted = {k: needs_lookup(seqs, states[k]) for k, seqs in keys.items()}
    flat = [(d, j, s) for (d, j), seqs in wanted.items() for s in seqs]
    windows = [(*k, *gap_window(seqs, states[k])) for k, seqs in keys.items()]
    windows = [w for w in windows if w[2] is not None or w[4]]
    if not flat and not windows:
        return {}
    async with conn.pipeline():
        gaps = await conn.execute(q.SELECT_GAPS, _columns(windows, 5)) if windows else None
        sums = await conn.execute(q.SELECT_CHECKSUMS, _columns(flat, 3)) if flat else None
    found: dict[JournalKey, set[Gap]] = {}
    for d, j, *gap in await gaps.fetchall() if gaps else ():
        found.setdefault((d, j), set()).add(Gap(*gap))
    for key, loaded in found.items():
        states[key] = states[key]._replace(gaps=tuple(sorted(loaded)))
    return {(d, j, s): checksum for d, j, s, checksum in await sums.fetchall()} if sums else {}


async def _copy_impressions(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    """Binary COPY of the keys into impression_keys, then of the rows into impressions.

    COPY straight into both tables is the fastest path PostgreSQL has (the
    partitioned table routes and buffers rows per partition). A key already
    stored cannot reach here under the journal lock; if one ever did, its
    primary key would abort the transaction and the caller would redo it.
    """
    if not rows:
        return
    cur = conn.cursor()
    async with cur.copy(q.COPY_KEYS) as copy:
        copy.set_types(q.KEY_TYPES)
        for row in rows:
            await copy.write_row([row[i] for i in _KEY_POSITIONS])
    async with cur.copy(q.COPY_IMPRESSIONS) as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            await copy.write_row(row)


async def _write_rejects(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    merged = merge_rejects(rows)
    loose = sorted({_lock_id(r) for r in merged if not key_trusted(r[_REASON])})
    if loose:
        # No journal lock covers these keys: lock them in order so that two
        # commits upserting the same rejects cannot deadlock.
        await conn.execute(q.ADVISORY_LOCKS, (loose,))
    await conn.execute(q.UPSERT_REJECTS, _columns(merged, len(merged[0])))


def merge_rejects(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Reject rows with a `times` column, equal keys merged as repeated upserts would.

    One statement may not upsert a row twice: the first row of a key is kept,
    with the last one's `received_at` and the count as `times`.
    """
    merged: dict[tuple[Any, ...], list[Any]] = {}
    out: list[list[Any]] = []
    for row in rows:
        entry = [*row, 1]
        entry[_DETAIL], entry[_RAW] = _text(row[_DETAIL]), _text(row[_RAW])
        key = tuple(row[i] for i in _KEY)
        if None in key:
            out.append(entry)  # NULLs never conflict: every such row is its own
        elif key in merged:
            merged[key][_RECEIVED] = row[_RECEIVED]
            merged[key][-1] += 1
        else:
            merged[key] = entry
            out.append(entry)
    return [tuple(entry) for entry in out]


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, which an invalid record's error may quote.
    return value.replace("\x00", "\ufffd")


def _lock_id(row: tuple[Any, ...]) -> int:
    """A 64-bit advisory lock id for a reject row's unique key."""
    digest = hashlib.blake2b(repr([row[i] for i in _KEY]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _write_sequences(
    conn: AsyncConnection, changes: dict[JournalKey, SequenceChange], now: int
) -> None:
    closed = [(*key, gap.first) for key, change in changes.items() for gap in change.closed]
    opened = [(*key, *gap) for key, change in changes.items() for gap in change.opened]
    if closed:
        await conn.execute(q.DELETE_GAPS, _columns(closed, 3))
    if opened:
        await conn.execute(q.INSERT_GAPS, _columns(opened, 6))
    if changes:
        states = [
            (*key, c.state.high_water, c.state.high_water_ts, c.state.gap_count, c.state.suspect)
            for key, c in changes.items()
        ]
        await conn.execute(q.UPDATE_JOURNALS, (now, *_columns(states, 6)))


_UPSERT_ROLLUP = {rollup: postgres_upsert(rollup) for rollup in ROLLUPS}


async def _write_rollups(conn: AsyncConnection, rollups: dict[Rollup, list[Delta]]) -> None:
    # Last before COMMIT: hot rollup rows stay locked only for the commit itself,
    # and the deltas come sorted, so concurrent commits lock them in one order.
    for rollup, deltas in rollups.items():
        await conn.execute(_UPSERT_ROLLUP[rollup], _columns(deltas, len(rollup.columns)))


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column, for `unnest`."""
    return [[row[i] for row in rows] for i in range(width)]
