"""SQLite plumbing shared by the store: connections, bulk inserts, the checkpointer.

Every connection gets the same pragmas (WAL, `synchronous=FULL`, a busy
timeout); errors are translated here, at the boundary, into ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Final, TypeVar

from playproof.errors import (
    StoreDataError,
    StoreError,
    StoreUnavailable,
)

T = TypeVar("T")


class BulkInsert:
    """An INSERT of many rows a statement, in chunks of a few hundred.

    Python's sqlite3 gives up the GIL around every statement step; with
    `executemany` that is once a row, and each time the writer must win the GIL
    back from a busy event loop (up to the 5 ms switch interval): measured, a
    row then costs milliseconds instead of microseconds. One step per chunk.
    """

    def __init__(self, head: str, width: int, tail: str = "", chunk: int = 256) -> None:
        self._head, self._tail, self._chunk = head, tail, chunk
        self._row = "(" + ", ".join("?" * width) + ")"
        self._sql: dict[int, str] = {}

    def run(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert every row."""
        for start in range(0, len(rows), self._chunk):
            part = rows[start : start + self._chunk]
            conn.execute(self._statement(len(part)), list(chain.from_iterable(part)))

    def _statement(self, count: int) -> str:
        sql = self._sql.get(count)
        if sql is None:
            values = ", ".join([self._row] * count)
            sql = self._sql[count] = f"{self._head} VALUES {values} {self._tail}"
        return sql


BUSY_TIMEOUT_MS: Final = 10_000
# The WAL's bound under sustained writes (see SqliteStore._bound_wal).
WAL_LIMIT_BYTES: Final = 64 * 1024 * 1024
# How much the WAL holds before the writer starts it over (half its bound; see
# Checkpointer.caught_up).
WAL_RESTART_BYTES: Final = WAL_LIMIT_BYTES // 2
# A WAL frame: a page and its 24-byte header.
WAL_FRAME_HEADER: Final = 24


def translate(exc: sqlite3.Error | ValueError, doing: str) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"SQLite cannot {doing} now: {exc}")
    # A constraint, or a value SQLite cannot hold (OverflowError is a ValueError,
    # raised while binding an integer past 64 bits): the data's fault, not the store's.
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | ValueError):
        return StoreDataError(f"SQLite refused the data to {doing}: {exc}")
    return StoreError(f"SQLite failed to {doing}: {exc}")


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas every playproof connection needs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class Checkpointer:
    """Moves the WAL into the database file on a thread of its own, ten times a second.

    Often, so that each copy and the database file's fsync after it are small: a commit's
    fdatasync queues behind that fsync on the disk (issue 17: every half second, the
    copies of some 3,500 pages held commits 10-25 ms at 1000 frames/s).
    """

    def __init__(
        self, path: Path, every_s: float = 0.1, restart_bytes: int = WAL_RESTART_BYTES
    ) -> None:
        self._path = path
        self._every_s = every_s
        self._restart_bytes = restart_bytes
        self._frame_bytes = 0  # read from the database once connected
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        # Set when a checkpoint found every frame of the WAL copied (see `caught_up`).
        self._caught_up = False

    def start(self) -> None:
        """Start checkpointing."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop; a last checkpoint truncates the WAL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await asyncio.get_running_loop().run_in_executor(self._pool, self._last)
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._every_s)
            await loop.run_in_executor(self._pool, self._checkpoint, "PASSIVE")

    def _checkpoint(self, mode: str) -> None:
        # PASSIVE never waits for the writer; a failure (a full disk) is
        # retried on the next round, and the commits go on meanwhile.
        with contextlib.suppress(sqlite3.Error):
            if self._conn is None:
                self._conn = connect(self._path)
                page = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
                self._frame_bytes = page + WAL_FRAME_HEADER
            busy, frames, copied = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            full = frames * self._frame_bytes >= self._restart_bytes
            self._caught_up = busy == 0 and frames == copied and full

    def caught_up(self) -> bool:
        """Whether a checkpoint has copied the whole WAL, holding at least `restart_bytes`,
        since this was last asked.

        The writer then finishes the job (see SqliteStore._bound_wal): under steady
        writes the WAL is never wholly copied when a write begins, so SQLite never
        restarts it from its start, and it grows until truncated. Finishing costs the
        writer two fsyncs (the WAL's, the database file's) with commits waiting behind
        them, so it is done once the WAL holds half its bound, not at every round.
        """
        found, self._caught_up = self._caught_up, False
        return found

    def _last(self) -> None:
        self._checkpoint("TRUNCATE")
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def snapshot(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """`fn` run inside one read transaction, so that its queries see one snapshot."""

    def run(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    return run


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def statements(script: str) -> Iterable[str]:
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()
