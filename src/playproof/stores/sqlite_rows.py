"""The SQLite store's statements, run on its threads: commits, devices, health, rejects."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from playproof.protocol import Ack, Status, decode_status, encode
from playproof.rules import Gap, SequenceChange, SequenceState
from playproof.stores.base import (
    IMPRESSION_COLUMNS,
    REJECT_COLUMNS,
    BatchWrite,
    HeldRecords,
    JournalInfo,
    JournalKey,
    Key,
    RejectInfo,
    StatusInfo,
    gap_window,
    needs_lookup,
    sequence_changes,
    status_info,
    tracked_keys,
)
from playproof.stores.draft import plan_group
from playproof.stores.rollup import ROLLUPS, Rollup, sqlite_upsert
from playproof.stores.sqlite_conn import BulkInsert

_INSERT_IMPRESSION = BulkInsert(
    f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)})", len(IMPRESSION_COLUMNS)
)
_UPSERT_REJECT = BulkInsert(
    f"INSERT INTO rejects ({', '.join(REJECT_COLUMNS)})",
    len(REJECT_COLUMNS),
    "ON CONFLICT (device_id, journal_id, seq, checksum, reason) "
    "DO UPDATE SET times = times + 1, received_at = excluded.received_at",
)
_UPSERT_JOURNAL = (
    "INSERT INTO journals (device_id, journal_id, high_water, high_water_ts, gap_count, "
    "suspect, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id, journal_id) DO UPDATE SET "
    "high_water = excluded.high_water, high_water_ts = excluded.high_water_ts, "
    "gap_count = excluded.gap_count, suspect = excluded.suspect, last_seen = excluded.last_seen"
)
_GAP = "SELECT first_seq, last_seq, before_ts, after_ts FROM gaps"
_JOURNAL_GAPS = " WHERE device_id = ? AND journal_id = ?"
# The gaps overlapping low..high: from the last one starting at or below `low` (gaps
# never overlap, so it is the only earlier one that may reach `low`) up to `high`,
# along the primary key.
_GAPS_IN = (
    f"{_GAP}{_JOURNAL_GAPS} AND first_seq BETWEEN COALESCE((SELECT max(first_seq) FROM gaps"
    f"{_JOURNAL_GAPS} AND first_seq <= ?), ?) AND ? AND last_seq >= ?"
)
_LAST_GAP = f"{_GAP}{_JOURNAL_GAPS} ORDER BY first_seq DESC LIMIT 1"
_EXISTING = (
    "SELECT seq, checksum FROM impressions WHERE device_id = ? AND journal_id = ? "
    "AND seq IN (SELECT value FROM json_each(?))"
)


def _load_state(conn: sqlite3.Connection, key: JournalKey, seqs: list[int]) -> SequenceState | None:
    """A journal's state with only the gaps these arrivals can fill or extend."""
    row = conn.execute(
        "SELECT high_water, high_water_ts, gap_count, suspect FROM journals "
        "WHERE device_id = ? AND journal_id = ?",
        key,
    ).fetchone()
    if row is None:
        return None
    state = SequenceState(row[0], row[1], (), row[2], bool(row[3]))
    window = gap_window(seqs, state)
    found: set[Gap] = set()
    if window.low is not None:
        params = (*key, *key, window.low, window.low, window.high, window.low)
        found.update(Gap(*r) for r in conn.execute(_GAPS_IN, params))
    if window.last:
        found.update(Gap(*r) for r in conn.execute(_LAST_GAP, key))
    return state._replace(gaps=tuple(sorted(found)))


def _gaps(conn: sqlite3.Connection, key: JournalKey) -> list[Gap]:
    rows = conn.execute(
        f"{_GAP}{_JOURNAL_GAPS} ORDER BY first_seq",
        key,
    ).fetchall()
    return [Gap(*row) for row in rows]


def _existing(
    conn: sqlite3.Connection, key: JournalKey, seqs: list[int]
) -> Iterable[tuple[Key, str]]:
    for seq, checksum in conn.execute(_EXISTING, (*key, json.dumps(seqs))):
        yield (key[0], key[1], seq), checksum


def commit(
    conn: sqlite3.Connection, writes: Sequence[BatchWrite], max_open_gaps: int
) -> list[list[Ack]]:
    keys = tracked_keys(writes)
    states = {k: _load_state(conn, k, seqs) for k, seqs in keys.items()}
    existing: dict[Key, str] = {}
    for key, seqs in keys.items():
        lookup = needs_lookup(seqs, states[key])
        if lookup:
            existing.update(_existing(conn, key, lookup))
    plan, rollups = plan_group(writes, existing)
    _INSERT_IMPRESSION.run(conn, plan.impressions)
    _UPSERT_REJECT.run(conn, plan.rejects)
    for rollup, rows in rollups.items():
        _UPSERT_ROLLUP[rollup].run(conn, rows)
    known = {k: s for k, s in states.items() if s is not None}
    now = max(w.received_at for w in writes)
    _save_sequences(conn, sequence_changes(plan.arrivals, known, max_open_gaps), now)
    return plan.acks


def _rollup_upsert(rollup: Rollup) -> BulkInsert:
    head, tail = sqlite_upsert(rollup)
    return BulkInsert(head, len(rollup.columns), tail)


_UPSERT_ROLLUP = {rollup: _rollup_upsert(rollup) for rollup in ROLLUPS}


def _save_sequences(
    conn: sqlite3.Connection, changes: dict[JournalKey, SequenceChange], now: int
) -> None:
    for key, change in changes.items():
        if change.closed:
            conn.executemany(
                "DELETE FROM gaps WHERE device_id = ? AND journal_id = ? AND first_seq = ?",
                [(*key, gap.first) for gap in change.closed],
            )
        if change.opened:
            conn.executemany(
                "INSERT INTO gaps (device_id, journal_id, first_seq, last_seq, before_ts, "
                "after_ts) VALUES (?, ?, ?, ?, ?, ?)",
                [(*key, *gap) for gap in change.opened],
            )
        state = change.state
        journal = (state.high_water, state.high_water_ts, state.gap_count, int(state.suspect))
        conn.execute(_UPSERT_JOURNAL, (*key, *journal, now, now))


def save_status(conn: sqlite3.Connection, status: Status, received_at: int) -> None:
    conn.execute(
        "INSERT INTO device_status (device_id, received_at, payload, evicted_total) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
        "received_at = excluded.received_at, payload = excluded.payload, "
        "evicted_total = evicted_total + excluded.evicted_total",
        (status.device_id, received_at, encode(status).decode(), status.evicted),
    )
    conn.executemany(
        "INSERT INTO evictions (device_id, journal_id, first_seq, last_seq, reported_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (status.device_id, status.journal_id or "", first, last, received_at)
            for first, last in status.evicted_ranges
        ],
    )


def latest_status(conn: sqlite3.Connection, device_id: str) -> StatusInfo | None:
    row = conn.execute(
        "SELECT received_at, payload, evicted_total FROM device_status WHERE device_id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    ranges = conn.execute(
        "SELECT journal_id, first_seq, last_seq FROM evictions WHERE device_id = ? "
        "ORDER BY journal_id, first_seq",
        (device_id,),
    ).fetchall()
    return status_info(device_id, row[0], decode_status(row[1].encode()), ranges)


def journals(conn: sqlite3.Connection, device_id: str | None) -> list[JournalInfo]:
    sql = "SELECT device_id, journal_id, high_water, first_seen, last_seen, suspect FROM journals"
    params: tuple[str, ...] = ()
    if device_id is not None:
        sql += " WHERE device_id = ?"
        params = (device_id,)
    rows = conn.execute(sql + " ORDER BY device_id, first_seen, journal_id", params).fetchall()
    return [
        JournalInfo(
            device, journal, high, first, last, tuple(_gaps(conn, (device, journal))), bool(sus)
        )
        for device, journal, high, first, last, sus in rows
    ]


_HELD_IMPRESSIONS = (
    "SELECT device_id, journal_id, seq, checksum, status, start_ts, content_id FROM impressions "
    "WHERE device_id IN (SELECT value FROM json_each(?))"
)
_HELD_REJECTS = (
    "SELECT device_id, journal_id, seq, checksum, reason FROM rejects "
    "WHERE submitted_by IN (SELECT value FROM json_each(?)) "
    "AND (replay_result IS NULL OR replay_result NOT IN ('accepted', 'duplicate'))"
)


def held(conn: sqlite3.Connection, device_ids: Sequence[str]) -> HeldRecords:
    wanted = json.dumps(list(device_ids))
    conn.execute("BEGIN")  # one snapshot for both
    try:
        impressions = conn.execute(_HELD_IMPRESSIONS, (wanted,)).fetchall()
        rejects = conn.execute(_HELD_REJECTS, (wanted,)).fetchall()
    finally:
        conn.execute("COMMIT")
    return HeldRecords(impressions, rejects)


def rejects(
    conn: sqlite3.Connection, device_id: str | None, reason: str | None, limit: int
) -> list[RejectInfo]:
    where, params = [], []
    if device_id is not None:
        where.append("submitted_by = ?")
        params.append(device_id)
    if reason is not None:
        where.append("reason = ?")
        params.append(reason)
    sql = f"SELECT {', '.join(RejectInfo._fields)} FROM rejects"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [RejectInfo(*row) for row in rows]
