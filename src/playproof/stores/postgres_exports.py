"""PostgreSQL: an export's plan run in one transaction under its buyer's lock.

The lock is a transaction-level advisory lock per (schema, buyer): exports for
one buyer wait for each other (on any number of service nodes and CLI runs),
exports for different buyers run side by side. It is taken first; the plan's
first read of the candidates comes after, so it sees every play the previous
export for that buyer recorded (READ COMMITTED takes a snapshot per statement).
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection

from playproof.stores import postgres_verdicts
from playproof.stores.export_ledger import (
    LEDGER_COLUMNS,
    Execute,
    ExportInfo,
    ExportRequest,
    Insert,
    LoadCatalog,
    Probe,
    Read,
    Step,
    Watermark,
    plan_export,
)
from playproof.stores.postgres_verdicts import _CATALOG_LOCK

_LOCK: Final = (
    "SELECT pg_advisory_xact_lock(hashtext('playproof:export:' || current_schema() || ':' || %s))"
)
# The catalog lock every decision holds shared (postgres_verdicts): held exclusively for
# a moment, every decision under way has committed, and later ones log after it.
_HOLD_CATALOG: Final = f"SELECT pg_advisory_xact_lock({_CATALOG_LOCK})"
_LAST_LOG_ID: Final = "SELECT COALESCE(MAX(id), 0) FROM verification_log"
_COPY: Final = f"COPY export_plays ({', '.join(LEDGER_COLUMNS)}) FROM STDIN"


async def create_export(conn: AsyncConnection[Any], request: ExportRequest) -> ExportInfo:
    """Under the buyer's lock, in one transaction: take, decide and record its plays."""
    # Ids of the log come from a sequence, in no commit order: the last id is read once
    # no decision is under way (a transaction of its own, so that the lock is held for
    # a moment only); whatever is logged later has a higher id.
    upto = await _watermark(conn) if request.since_last else 0
    async with conn.transaction():
        await conn.execute(_LOCK.encode(), (request.buyer,))
        plan = plan_export(request, "postgres")
        answer: Any = None
        try:
            while True:
                step = plan.send(answer)
                answer = upto if isinstance(step, Watermark) else await _run(conn, step)
        except StopIteration as done:
            info: ExportInfo = done.value
            return info


async def _watermark(conn: AsyncConnection[Any]) -> int:
    async with conn.transaction():
        await conn.execute(_HOLD_CATALOG.encode())
        row = await (await conn.execute(_LAST_LOG_ID.encode())).fetchone()
    return int(row[0]) if row else 0


async def _run(conn: AsyncConnection[Any], step: Step) -> Any:
    if isinstance(step, Probe):
        # The ledger's statistics lag behind its rows (those of this transaction above
        # all): planned from them, a lookup of a page of keys becomes a scan per page.
        await conn.execute(b"SET LOCAL enable_seqscan = off")
        rows = await (await conn.execute(step.sql.encode(), tuple(step.params))).fetchall()
        await conn.execute(b"SET LOCAL enable_seqscan = on")
        return rows
    if isinstance(step, Read):
        return await (await conn.execute(step.sql.encode(), tuple(step.params))).fetchall()
    if isinstance(step, Execute):
        return (await conn.execute(step.sql.encode(), tuple(step.params))).rowcount
    if isinstance(step, Insert):
        async with conn.cursor() as cur, cur.copy(_COPY.encode()) as copy:
            for row in step.rows:
                await copy.write_row(row)
        return None
    assert isinstance(step, LoadCatalog)
    return await postgres_verdicts.load_catalog(conn)
