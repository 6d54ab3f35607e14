"""SQLite: an export's plan run in the writer's transaction (`stores/export_ledger`).

The writer holds SQLite's one write lock from BEGIN IMMEDIATE to COMMIT, so
exports (of any buyer) are serialized with every other write, including those
of other processes on the same file: two exports never take the same play.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from playproof.stores import sqlite_verdicts
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
from playproof.stores.sqlite_conn import BulkInsert

_LEDGER: Final = BulkInsert(
    f"INSERT INTO export_plays ({', '.join(LEDGER_COLUMNS)})", len(LEDGER_COLUMNS)
)

_LAST_LOG_ID: Final = "SELECT COALESCE(MAX(id), 0) FROM verification_log"


def create_export(conn: sqlite3.Connection, request: ExportRequest) -> ExportInfo:
    """In the writer's transaction: take, decide and record the buyer's plays."""
    plan = plan_export(request, "sqlite")
    answer: Any = None
    try:
        while True:
            answer = _run(conn, plan.send(answer))
    except StopIteration as done:
        info: ExportInfo = done.value
        return info


def _run(conn: sqlite3.Connection, step: Step) -> Any:
    if isinstance(step, Read | Probe):
        return conn.execute(step.sql, step.params).fetchall()
    if isinstance(step, Execute):
        return conn.execute(step.sql, step.params).rowcount
    if isinstance(step, Insert):
        _LEDGER.run(conn, step.rows)
        return None
    if isinstance(step, Watermark):
        # One writer: a log row's id is in commit order, every one up to the last visible.
        return conn.execute(_LAST_LOG_ID).fetchone()[0]
    assert isinstance(step, LoadCatalog)
    return sqlite_verdicts.load_catalog(conn)
