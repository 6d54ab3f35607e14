"""SQLite's WAL stays bounded under sustained writes, and checkpoints lose nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from playproof.stores.sqlite import SqliteStore
from tests.stores.pipeline import batch
from tests.support import make_record

LIMIT = 256 * 1024
BATCHES = 120
PER_BATCH = 50


async def test_the_wal_is_truncated_past_its_limit_while_writes_never_pause(
    tmp_path: Path,
) -> None:
    path = tmp_path / "playproof.db"
    store = SqliteStore(path, wal_limit_bytes=LIMIT)
    await store.open()
    wal = path.with_name(path.name + "-wal")
    largest = 0
    try:
        for b in range(BATCHES):
            first = b * PER_BATCH + 1
            records = [make_record(seq=s, end_ts=None) for s in range(first, first + PER_BATCH)]
            await store.commit([batch(list(records))])
            largest = max(largest, wal.stat().st_size)
    finally:
        await store.close()
    one_commit = PER_BATCH * 4096  # at most a page per record, and then some
    assert largest <= LIMIT + 4 * one_commit, f"the WAL grew to {largest} bytes"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM impressions").fetchone()[0] == BATCHES * PER_BATCH


def wal_salt(wal: Path) -> bytes:
    """The WAL header's salts: SQLite changes them each time it starts the WAL over."""
    with wal.open("rb") as f:
        return f.read(24)[16:24]


async def steady_writes(store: SqliteStore, path: Path, seconds: float) -> set[bytes]:
    """Commit 10-record batches back to back for `seconds`; the WAL salts seen after each."""
    await store.open()
    wal = path.with_name(path.name + "-wal")
    salts, seq = set(), 0
    loop = asyncio.get_running_loop()
    try:
        until = loop.time() + seconds
        while loop.time() < until:
            records = [make_record(seq=seq + i, end_ts=None) for i in range(1, 11)]
            seq += 10
            await store.commit([batch(records)])
            salts.add(wal_salt(wal))
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM impressions").fetchone()[0] == seq
    return salts


async def test_under_steady_writes_the_wal_starts_over_instead_of_growing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "playproof.db"
    # Never truncated: only started over, as soon as a checkpoint has caught up.
    store = SqliteStore(path, wal_limit_bytes=1 << 40, wal_restart_bytes=0)
    salts = await steady_writes(store, path, 2.5)
    assert len(salts) >= 3, "the WAL was started over at most once"


async def test_the_wal_is_not_started_over_before_it_holds_its_restart_size(
    tmp_path: Path,
) -> None:
    """Starting over costs the writer two fsyncs with commits waiting: not at every round
    of the checkpointer, only once the WAL holds `wal_restart_bytes`."""
    path = tmp_path / "playproof.db"
    store = SqliteStore(path, wal_limit_bytes=1 << 40, wal_restart_bytes=1 << 40)
    salts = await steady_writes(store, path, 2.5)
    # SQLite itself may start it over once, should a checkpoint finish between two commits.
    assert len(salts) <= 2, f"the WAL was started over {len(salts) - 1} times"
