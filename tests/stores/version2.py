"""A database left at schema version 2 by a playproof without duration bounds.

Such a service accepted `duration_ms` up to 2^53 - 1 and added it to the
rollups as it came: past 64 bits SQLite's upsert silently stored an inexact
REAL, and PostgreSQL's rows sat near the bigint limit, failing every later
commit adding to them. These helpers build that state with raw SQL, from the
migration scripts of versions 1 and 2 themselves, so that the tests can show
what opening it with today's code repairs.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from playproof.stores import migrations

HUGE: Final = 2**53 - 1
# A bucket well in the past: on PostgreSQL its rows land in the default partition.
START: Final = int(datetime(2026, 3, 6, 10, tzinfo=UTC).timestamp() * 1000)
# Three plays claiming 2^53 - 1 ms each and one honest 15 s play, in one 15-minute bucket.
DURATIONS: Final = (HUGE, HUGE, HUGE, 15_000)
IDS: Final = ("cmp-1", "ag-1", "cnt-1", "sup-1", "store-1", "scr-1")
# What the rollups held: SQLite's REAL after overflowing, PostgreSQL's near-limit bigint.
DAMAGED: Final = {"sqlite": 1.8446744073709552e19, "postgres": 9_223_372_036_854_775_000}

_IMPRESSION = (
    "INSERT INTO impressions (device_id, journal_id, seq, campaign_id, ad_group_id, "
    "content_id, store_id, supplier_id, start_ts, end_ts, duration_ms, expected_ms, "
    "end_reason, clock_offset_ms, clock_synced, checksum, status, quality, flags, "
    "verification, received_at, skew_ms) VALUES "
    "(?, 'j-1', ?, ?, ?, ?, ?, ?, ?, ?, ?, 15000, 'completed', 0, TRUE, ?, 'valid', 100, "
    "'', 'pending', ?, 0)"
)
_CONTENT = "INSERT INTO rollup_content VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
_DEVICE = "INSERT INTO rollup_device VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"


def _statements(dialect: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The damaged rows: the impressions as stored, and the rollups as old code left them."""
    campaign, group, content, supplier, store, device = IDS
    out: list[tuple[str, tuple[Any, ...]]] = []
    for seq, duration in enumerate(DURATIONS, 1):
        start = START + seq * 1000
        values = (device, seq, campaign, group, content, store, supplier, start, start + 15_000)
        out.append((_IMPRESSION, (*values, duration, f"{seq:064x}", start + 16_000)))
    plays, played = len(DURATIONS), DAMAGED[dialect]
    measures = (plays, plays, played, 100 * plays)
    out.append((_CONTENT, (START, campaign, group, content, supplier, *measures)))
    dims = (campaign, group, content, supplier, store, device)
    out.append((_DEVICE, (START, *dims, *measures)))
    return out


def sqlite_at_version_2(path: str) -> None:
    """Create the SQLite file at schema version 2 holding the damaged rollups."""
    with closing(sqlite3.connect(path)) as conn:
        for step in migrations.migrations("sqlite"):
            if step.version <= 2:
                conn.executescript(step.sql)
        with conn:
            for sql, params in _statements("sqlite"):
                conn.execute(sql, params)
        conn.execute("PRAGMA user_version = 2")


async def postgres_at_version_2(url: str) -> None:
    """Create, in the URL's schema, the PostgreSQL tables at version 2 with the damaged rollups."""
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        await conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for step in migrations.migrations("postgres"):
            if step.version <= 2:
                await conn.execute(step.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (step.version, step.name),
                )
        for sql, params in _statements("postgres"):
            await conn.execute(sql.replace("?", "%s"), params)


async def at_version_2(url: str) -> None:
    """A database at `url` (SQLite or PostgreSQL) at schema version 2, its rollups damaged."""
    if url.startswith("sqlite"):
        sqlite_at_version_2(url.removeprefix("sqlite:///"))
    else:
        await postgres_at_version_2(url)
