"""SQLite: the catalog and verification transactions, run on the store's threads.

Catalog updates and decisions run on the single writer in `BEGIN IMMEDIATE`
transactions, so a decision can never interleave with a catalog change: the
version read with a screen's state is checked again before its decisions
are written, and a decision made against an older catalog is dropped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

from playproof.catalog import Catalog, Change
from playproof.stores.verdicts import (
    ENTRIES_SQL,
    LINE_ROLLUP_COLUMNS,
    PLAY_COLUMNS,
    ROLLUP_COLUMNS,
    VERSION_SQL,
    CatalogState,
    ScreenLoad,
    catalog_of,
    change_rows,
    decided_after,
    decided_log,
    decision_rows,
    entry_rows,
    line_deltas,
    log_rows,
    rollup_deltas,
    screen_state,
    verdict_sql,
    window,
)
from playproof.verification import Affected, Decision, Play, affected

_SQL: Final = verdict_sql("?")
_SHOTS: Final = (
    "SELECT s.sha256, f.phash, f.blank, f.sha256 IS NULL FROM screenshots s "
    "LEFT JOIN screenshot_facts f ON f.sha256 = s.sha256 "
    "WHERE s.sha256 IN (SELECT value FROM json_each(?))"
)
_ROLLUP: Final = (
    f"INSERT INTO rollup_verification ({', '.join(ROLLUP_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ROLLUP_COLUMNS))}) "
    "ON CONFLICT (bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status, "
    "reason) DO UPDATE SET plays = plays + excluded.plays"
)
_LINE_ROLLUP: Final = (
    f"INSERT INTO rollup_verification_line ({', '.join(LINE_ROLLUP_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(LINE_ROLLUP_COLUMNS))}) "
    "ON CONFLICT (bucket, campaign_id, ad_group_id, supplier_id, status, reason) "
    "DO UPDATE SET plays = plays + excluded.plays"
)
_HIT: Final = (
    "SELECT device_id, MIN(received_at) FROM impressions "
    "WHERE verification IN ('verified', 'failed') AND ("
    "campaign_id IN (SELECT value FROM json_each(?)) "
    "OR device_id IN (SELECT value FROM json_each(?)) "
    "OR device_id IN (SELECT device_id FROM devices "
    "WHERE store_id IN (SELECT value FROM json_each(?)))) GROUP BY device_id"
)


def load_catalog(conn: sqlite3.Connection) -> CatalogState:
    """The catalog and its version, from one snapshot."""
    rows = conn.execute(ENTRIES_SQL).fetchall()
    return catalog_of(rows, int(conn.execute(VERSION_SQL).fetchone()[0]))


def update_catalog(
    conn: sqlite3.Connection,
    update: Callable[[Catalog], tuple[Catalog, list[Change]]],
    now: int,
) -> list[Change]:
    """In the writer's transaction: merge, keep the changes, send affected plays back."""
    before = load_catalog(conn).catalog
    after, changes = update(before)
    if not changes:
        return []
    conn.executemany(_SQL.upsert_entry, entry_rows(changes, now))
    conn.executemany(_SQL.insert_change, change_rows(changes, now))
    version = int(conn.execute(VERSION_SQL).fetchone()[0])
    requeue(conn, affected(changes, before, after), now, f"catalog change {version}")
    return changes


def requeue(conn: sqlite3.Connection, hit: Affected, now: int, cause: str) -> int:
    """Send decided plays a change touches back to pending, from the first one on, per screen.

    Later plays on the same screen go back too: their overlap and cap depended on it.
    """
    if not hit:
        return 0
    lists = [json.dumps(sorted(s)) for s in (hit.campaigns, hit.devices, hit.stores)]
    undone = 0
    for device_id, since in conn.execute(_HIT, lists).fetchall():
        rows = conn.execute(_SQL.undo, (device_id, since)).fetchall()
        add_rollups(conn, rollup_deltas([r[2:] for r in rows], -1))
        back = (((device_id, r[0], r[1]), "pending", "") for r in rows)
        conn.executemany(_SQL.log, log_rows(back, now, cause))
        undone += conn.execute(_SQL.requeue, (device_id, since)).rowcount
    return undone


def add_rollups(conn: sqlite3.Connection, deltas: list[tuple[Any, ...]]) -> None:
    """Add rollup rows, and the same counts to the line rollup, in the caller's transaction."""
    conn.executemany(_ROLLUP, deltas)
    conn.executemany(_LINE_ROLLUP, line_deltas(deltas))


def load_screen(conn: sqlite3.Connection, device_id: str, watermark: int, limit: int) -> ScreenLoad:
    """A screen's pending plays up to `watermark` (received_at), in stored order, and around."""
    row = conn.execute("SELECT store_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    pending = conn.execute(_SQL.pending, (device_id, watermark, limit)).fetchall()
    decided: list[Any] = []
    shots: list[Any] = []
    if pending:
        low, high = window(pending)
        decided = conn.execute(_SQL.around, (device_id, low, high)).fetchall()
        named = sorted({p[PLAY_COLUMNS.index("screenshot_sha256")] for p in pending} - {None})
        shots = conn.execute(_SHOTS, (json.dumps(named),)).fetchall() if named else []
    return screen_state(device_id, row[0] if row else None, pending, decided, shots)


def save_decisions(
    conn: sqlite3.Connection,
    decisions: Sequence[tuple[Play, Decision]],
    now: int,
    catalog_version: int,
) -> list[str] | None:
    """Write decisions still pending, with log and rollup: the statuses written, in order;
    None if the catalog changed since."""
    if int(conn.execute(VERSION_SQL).fetchone()[0]) != catalog_version:
        return None
    done = [
        (play, decision)
        for (play, decision), params in zip(decisions, decision_rows(decisions, now), strict=True)
        if conn.execute(_SQL.decide, params).rowcount == 1
    ]
    conn.executemany(_SQL.log, decided_log(done, now))
    add_rollups(conn, rollup_deltas([decided_after(p, d) for p, d in done], +1))
    return [decision.status for _, decision in done]


def save_facts(
    conn: sqlite3.Connection, facts: Sequence[tuple[str, str | None, bool, str | None]]
) -> None:
    """Keep what screenshots show: (sha256, phash or None, blank, error)."""
    conn.executemany(
        "INSERT INTO screenshot_facts (sha256, phash, blank, error) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO NOTHING",
        facts,
    )


def add_reference(
    conn: sqlite3.Connection, content_id: str, sha256: str, phash: str, now: int
) -> bool:
    """Keep a content's reference image hash; False if it was known."""
    cur = conn.execute(
        "INSERT INTO content_references (content_id, sha256, phash, added_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (content_id, sha256, phash, now),
    )
    return cur.rowcount > 0
