"""PostgreSQL: the billing statement's snapshot and its one write.

A statement's reads run in one read-only transaction holding the catalog lock
exclusively (the lock every decision holds shared and every catalog change
exclusively, stores/postgres_verdicts.py). Taking it waits for the decisions
under way; holding it keeps new ones and catalog changes out until the reads
are done. Log ids are drawn before commit, so concurrent decisions may commit
out of id order: with none of them in flight the log's last id marks exactly
the decisions the statement saw. Each read then sees every decision and
catalog change at once, so verified, failed, their reasons and the prices
agree; only new plays can land in between, and they count as pending, the
valid plays read last.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from playproof.errors import Conflict
from playproof.stores.postgres_verdicts import _CATALOG_LOCK
from playproof.stores.statements import (
    FinalStatement,
    Rebase,
    document_sql,
    insert_params,
    insert_sql,
    rebase_params,
    rebase_sql,
)

Conn = AsyncConnection[TupleRow]

_HOLD_CATALOG: Final = f"SELECT pg_advisory_xact_lock({_CATALOG_LOCK})"


class PostgresSnapshot:
    """Read-only queries inside the statement's transaction."""

    dialect = "postgres"

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def read_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query with `%s` placeholders."""
        return await (await self._conn.execute(sql.encode(), tuple(params))).fetchall()


@contextlib.asynccontextmanager
async def snapshot(
    connection: Callable[[str], AbstractAsyncContextManager[Conn]],
) -> AsyncIterator[PostgresSnapshot]:
    """The statement's transaction, on a pooled connection (psycopg's errors translated)."""
    async with connection("read a statement's counts") as conn, conn.transaction():
        await conn.execute("SET TRANSACTION READ ONLY")
        await conn.execute(_HOLD_CATALOG)
        yield PostgresSnapshot(conn)


async def save(conn: Conn, final: FinalStatement, rebased: Sequence[Rebase]) -> str:
    """In one transaction: keep a final statement, move the billed lines it adjusts."""
    async with conn.transaction():
        inserted = await conn.execute(insert_sql("%s").encode(), insert_params(final))
        if inserted.rowcount == 0:
            # Finalized by another request first: that document is the statement.
            found = await conn.execute(document_sql("%s").encode(), tuple(final.key))
            row = await found.fetchone()
            assert row is not None
            return str(row[0])
        for rebase in rebased:
            moved = await conn.execute(rebase_sql("%s").encode(), rebase_params(rebase, final.key))
            if moved.rowcount != 1:
                raise Conflict(
                    f"statement {rebase.was.key.label()} was adjusted by another statement "
                    "meanwhile: count again"
                )
    return final.document
