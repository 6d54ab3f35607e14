"""SQLite: the billing statement's snapshot and its one write.

A snapshot is one read transaction on a connection of its own: WAL lets it see
one state of the file for as long as it lasts while the single writer goes on.
Decisions, their log rows and catalog changes are each written by that writer in
one transaction, so a snapshot never holds half of one, and the log's last id
marks exactly the decisions it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from playproof.errors import Conflict
from playproof.stores.sqlite_conn import T, connect, rollback, translate
from playproof.stores.statements import (
    FinalStatement,
    Rebase,
    document_sql,
    insert_params,
    insert_sql,
    rebase_params,
    rebase_sql,
)


async def _run(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
    """`fn` on one of the store's reader threads, its errors translated."""
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    except sqlite3.Error as exc:
        raise translate(exc, "read a statement's counts") from exc


class SqliteSnapshot:
    """Read-only queries inside one read transaction."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, pool: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._pool = pool

    async def read_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query with `?` placeholders, in the snapshot."""
        return await _run(self._pool, lambda: self._conn.execute(sql, params).fetchall())


@contextlib.asynccontextmanager
async def snapshot(path: Path, pool: ThreadPoolExecutor) -> AsyncIterator[SqliteSnapshot]:
    """A snapshot of the file, on a connection opened for it and closed after."""
    conn = await _run(pool, lambda: connect(path))

    def close() -> None:
        rollback(conn)
        conn.close()

    try:
        # Deferred: the first read takes the snapshot, and the transaction keeps it.
        await _run(pool, lambda: conn.execute("BEGIN"))
        yield SqliteSnapshot(conn, pool)
    finally:
        await asyncio.get_running_loop().run_in_executor(pool, close)


def save(conn: sqlite3.Connection, final: FinalStatement, rebased: Sequence[Rebase]) -> str:
    """In the writer's transaction: keep a final statement, move the billed lines it adjusts."""
    if conn.execute(insert_sql("?"), insert_params(final)).rowcount == 0:
        # Finalized by another request first: that document is the statement.
        return str(conn.execute(document_sql("?"), tuple(final.key)).fetchone()[0])
    for rebase in rebased:
        if conn.execute(rebase_sql("?"), rebase_params(rebase, final.key)).rowcount != 1:
            raise Conflict(
                f"statement {rebase.was.key.label()} was adjusted by another statement "
                "meanwhile: count again"
            )
    return final.document
