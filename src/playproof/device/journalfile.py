"""The journal's SQLite file: connecting, its durability settings, its schema, corruption.

Every connection is WAL with `locking_mode=EXCLUSIVE` (one process per journal, and
the WAL index in memory: no `-shm` file) and, outside simulations,
`synchronous=FULL`: a commit is on disk when it returns. The setting is read back
after it is made, and `synchronous_mode` reads it from a live connection, so that a
journal that lost it is noticed rather than trusted.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from playproof.device import ledger as ledgers
from playproof.errors import JournalError

log = logging.getLogger(__name__)

T = TypeVar("T")

JOURNAL_FILE: Final = "journal.db"
SCHEMA_VERSION: Final = "2"
# `full` always; `off` only for simulations (see Journal.open).
SYNC_MODES: Final = ("full", "normal", "off")
# What `PRAGMA synchronous` answers, by its number.
_SYNC_NAMES: Final = {0: "off", 1: "normal", 2: "full", 3: "extra"}
# A small page cache: a journal's working set is its newest pages, and a fleet
# simulator holds thousands of journals in one process.
CACHE_KIB: Final = 512
WAL_PAGES: Final = 64

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE plays (
    seq    INTEGER PRIMARY KEY,
    state  TEXT NOT NULL CHECK (state IN ('open', 'ready')),
    end_ts INTEGER NOT NULL,
    body   BLOB NOT NULL
);
CREATE TABLE evictions (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
"""


def connect(path: Path, device_id: str, synchronous: str = "full") -> sqlite3.Connection:
    """Open the SQLite file, creating the journal in one transaction when it is new."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, synchronous)
        if not _has_meta(conn):
            _create(conn, device_id)
    except (sqlite3.DatabaseError, JournalError):
        conn.close()
        raise
    return conn


def open_failure(path: Path, exc: sqlite3.DatabaseError) -> str:
    """What to say when the file cannot be opened."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
        return f"journal {path} is in use by another process; give each device its own folder"
    return f"cannot open journal {path}: {exc}"


def configure(conn: sqlite3.Connection, synchronous: str = "full") -> None:
    """Exclusive WAL, the durability asked for (checked), a small cache, a quick check."""
    # Exclusive locking: one process per journal, and the WAL index lives in memory
    # (no -shm file), which saves a file descriptor per device.
    conn.execute("PRAGMA busy_timeout = 1000")
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise sqlite3.DatabaseError(f"expected WAL journal mode, got {mode}")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    # SQLite ignores a setting it cannot apply without a word: read it back. (Not a
    # DatabaseError: the file is fine, and must not be moved aside as corrupt.)
    if (got := synchronous_mode(conn)) != synchronous:
        raise JournalError(f"expected the journal's synchronous={synchronous}, got {got}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    # A small WAL, checkpointed often, keeps the data in the main file and the
    # WAL's own space reused rather than grown: on a full disk the evictions
    # that make room must fit in space the journal already holds.
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {check}")


def synchronous_mode(conn: sqlite3.Connection) -> str:
    """The connection's `synchronous` setting by name: off, normal, full or extra."""
    value = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    return _SYNC_NAMES.get(value, str(value))


def _has_meta(conn: sqlite3.Connection) -> bool:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return False
    if not {"meta", "plays", "evictions"} <= tables:
        raise sqlite3.DatabaseError(f"not a playproof journal: tables {sorted(tables)}")
    return True


def _create(conn: sqlite3.Connection, device_id: str) -> None:
    journal_id = f"j-{secrets.token_hex(8)}"
    meta = {
        "schema": SCHEMA_VERSION,
        "journal_id": journal_id,
        "device_id": device_id,
        "created_at": str(time.time_ns() // 1_000_000),
        "last_seq": "0",
        "evicted_total": "0",
        "ledger_floor": "0",
    }

    def txn(c: sqlite3.Connection) -> None:
        for statement in [*_SCHEMA.strip().split(";\n"), ledgers.SCHEMA]:
            c.execute(statement)
        c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())

    transaction(conn, txn)
    log.info("created journal %s for device %s", journal_id, device_id)


def move_aside(path: Path, exc: sqlite3.DatabaseError) -> str:
    """Rename a corrupt journal (and its WAL) out of the way; say so loudly; the reason."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"journal.corrupt-{stamp}")
    try:
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(Path(f"{target}{suffix}"))
    except OSError as err:
        raise JournalError(
            f"journal {path} is corrupt ({exc}) and cannot be moved: {err}"
        ) from None
    reason = (
        f"journal {path} was corrupt ({exc}); moved aside to {target.name}, "
        "starting a new journal with a new journal_id (the service will see a sequence reset)"
    )
    log.error(reason)
    return reason


def transaction(conn: sqlite3.Connection, txn: Callable[[sqlite3.Connection], T]) -> T:
    """Run `txn` in one immediate transaction: committed whole, or rolled back whole."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = txn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def is_full(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for want of space (the disk, or the file's own limit)."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Corrupt or foreign content (our own checks raise without an error code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (None, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
