"""The device ledger: every record the journal sealed, and what became of it.

The journal deletes a record once its final ack arrives, so what a device
recorded is kept apart, compactly, in the `ledger` table of the same file: one
row per sealed record (sequence, checksum, content, times, end reason) and its
outcome, NULL while the record is queued, then `accepted:<status>`,
`duplicate`, `rejected:<reason>` or `evicted` (`final` when a caller removed a
record without naming the ack). Rows are written by the very transactions that
seal, remove or evict a record, so the ledger never disagrees with the journal:
a NULL outcome is exactly a queued record.

It is bounded: settled rows whose play ended more than `retention_ms` before the
newest row's are pruned, as a prefix of the sequence only (never past a queued
record or an open play), and `ledger_floor` in `meta` records how far: every
sequence at or below it is outside the ledger's window. `playproof reconcile`
compares the ledger with what the service holds; `read_ledger` reads a stopped
device's journal for it.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import msgspec

from playproof.errors import JournalError
from playproof.protocol import Record

# Seven days of records: long enough to settle any dispute the fleet's tools raise.
DEFAULT_RETENTION_MS: Final = 7 * 24 * 3600 * 1000
QUEUED: Final = None
EVICTED: Final = "evicted"

SCHEMA: Final = """CREATE TABLE ledger (
    seq         INTEGER PRIMARY KEY,
    checksum    TEXT NOT NULL,
    content_id  TEXT NOT NULL,
    end_reason  TEXT NOT NULL,
    start_ts    INTEGER NOT NULL,
    end_ts      INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    outcome     TEXT
)"""

_INSERT = (
    "INSERT INTO ledger (seq, checksum, content_id, end_reason, start_ts, end_ts, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SETTLE = "UPDATE ledger SET outcome = ? WHERE seq = ? AND outcome IS NULL"


class LedgerRow(NamedTuple):
    """One sealed record as the ledger keeps it."""

    seq: int
    checksum: str
    content_id: str
    end_reason: str
    start_ts: int
    end_ts: int
    recorded_at: int
    outcome: str | None


class LedgerView(NamedTuple):
    """A stopped device's journal, read for reconciliation."""

    device_id: str
    journal_id: str
    last_seq: int
    floor: int
    evicted_total: int
    rows: tuple[LedgerRow, ...]
    open_seqs: tuple[int, ...]


def outcome_of(result: str, status: str | None, reason: str | None) -> str:
    """The ledger's word for a final ack: `accepted:valid`, `duplicate`, `rejected:stale`..."""
    if result == "accepted":
        return f"accepted:{status}" if status else "accepted"
    if result == "rejected":
        return f"rejected:{reason}"
    return result


# --- written inside the journal's transactions -------------------------------


def ensure(conn: sqlite3.Connection) -> None:
    """Add the ledger to a journal created before it (its earlier records stay outside)."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ledger'").fetchone()
    if found is not None:
        return
    conn.execute(SCHEMA)
    last_seq = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
    conn.execute("INSERT INTO meta (key, value) VALUES ('ledger_floor', ?)", (last_seq,))
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    rows = conn.execute("SELECT body FROM plays WHERE state = 'ready'").fetchall()
    sealed(conn, [_decode(body) for (body,) in rows])


def sealed(conn: sqlite3.Connection, records: Iterable[Record]) -> None:
    """Note records just sealed as queued."""
    now = time.time_ns() // 1_000_000
    conn.executemany(
        _INSERT,
        [
            (r.seq, r.checksum, r.content_id, r.end_reason, r.start_ts, r.end_ts, now)
            for r in records
        ],
    )


def settled(conn: sqlite3.Connection, outcomes: Sequence[tuple[int, str]]) -> None:
    """Note the final outcome of records that were queued (others are left alone)."""
    conn.executemany(_SETTLE, [(outcome, seq) for seq, outcome in outcomes])


def evicted(conn: sqlite3.Connection, seqs: Iterable[int]) -> None:
    """Note records dropped for lack of space."""
    conn.executemany(_SETTLE, [(EVICTED, seq) for seq in seqs])


def prune(conn: sqlite3.Connection, retention_ms: int) -> int:
    """Drop the settled prefix older than the retention; the new floor."""
    floor = int(conn.execute("SELECT value FROM meta WHERE key = 'ledger_floor'").fetchone()[0])
    newest = conn.execute("SELECT max(end_ts) FROM ledger").fetchone()[0]
    if newest is None:
        return floor
    keep = conn.execute(
        "SELECT min(seq) FROM (SELECT min(seq) AS seq FROM ledger "
        "WHERE outcome IS NULL OR end_ts >= ? "
        "UNION ALL SELECT min(seq) FROM plays WHERE state = 'open')",
        (newest - retention_ms,),
    ).fetchone()[0]
    if keep is None:
        keep = conn.execute("SELECT max(seq) + 1 FROM ledger").fetchone()[0]
    bound = int(keep) - 1
    if bound <= floor:
        return floor
    conn.execute("DELETE FROM ledger WHERE seq <= ?", (bound,))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'ledger_floor'", (str(bound),))
    return bound


# --- reading a stopped device's journal ---------------------------------------


def read_ledger(path: Path) -> LedgerView:
    """Read a stopped device's ledger (it changes nothing); JournalError while in use.

    The file is opened as the device opens it, with an exclusive lock, so that a
    running device is refused rather than read half-written; a crashed device's
    WAL is folded into the file on close, as its next start would do.
    """
    try:
        uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {path}: {exc}") from None
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN")  # one snapshot for every query
        return view(conn)
    except sqlite3.Error as exc:
        raise JournalError(_read_failure(path, exc)) from None
    finally:
        conn.close()


def view(conn: sqlite3.Connection) -> LedgerView:
    """The ledger as seen through an open connection to a journal file."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if "ledger_floor" not in meta:
        raise sqlite3.DatabaseError("the journal has no ledger (opened by an older playproof)")
    rows = tuple(LedgerRow(*r) for r in conn.execute("SELECT * FROM ledger ORDER BY seq"))
    open_seqs = tuple(
        r[0] for r in conn.execute("SELECT seq FROM plays WHERE state = 'open' ORDER BY seq")
    )
    return LedgerView(
        device_id=meta["device_id"],
        journal_id=meta["journal_id"],
        last_seq=int(meta["last_seq"]),
        floor=int(meta["ledger_floor"]),
        evicted_total=int(meta["evicted_total"]),
        rows=rows,
        open_seqs=open_seqs,
    )


def _read_failure(path: Path, exc: sqlite3.Error) -> str:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
        return f"journal {path} is in use: stop its device before reading its ledger"
    return f"cannot read the ledger of journal {path}: {exc}"


def _decode(body: bytes) -> Record:
    try:
        return msgspec.json.decode(body, type=Record)
    except msgspec.ValidationError as exc:
        raise JournalError(f"a journal row does not hold a record: {exc}") from None
