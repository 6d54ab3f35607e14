"""The device journal: a crash-safe SQLite queue of plays, with a persistent sequence.

One file in the device's data folder, WAL mode, `synchronous=FULL`: a commit is
on disk when it returns. A play is written when it starts (its sequence
allocated and persisted in the same transaction), checkpointed while it plays,
and sealed when it ends. A record leaves only when the service's ack is final
(accepted, duplicate or rejected), or when capacity forces an eviction: oldest
first, counted, and kept as ranges until a status message has reported them.
The ledger (`ledger.py`) notes, in the same transactions, what became of each
sealed record, for reconciliation.

The public API is asyncio; the SQLite work runs on the shared pool
(`blocking.run_blocking`), one call at a time per journal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import msgspec

from playproof.device import ledger as ledgers
from playproof.device.blocking import run_blocking
from playproof.errors import JournalError
from playproof.protocol import Record, record_json, seal

log = logging.getLogger(__name__)

T = TypeVar("T")

JOURNAL_FILE: Final = "journal.db"
SCHEMA_VERSION: Final = "2"
# 8 hours of plays at one every 5 seconds.
DEFAULT_CAPACITY: Final = 5760
# Under a full disk, make room by evicting this many of the oldest records at once.
DISK_FULL_EVICTION: Final = 64
# A small page cache: a journal's working set is its newest pages, and a fleet
# simulator holds thousands of journals in one process.
CACHE_KIB: Final = 512
# Prune the ledger's settled prefix once every this many removals.
PRUNE_EVERY: Final = 500
# `full` always; `off` only for simulations (see Journal.open).
SYNC_MODES: Final = ("full", "normal", "off")
WAL_PAGES: Final = 64
RESERVE_FILE: Final = "journal.reserve"
RESERVE_BYTES: Final = 512 * 1024
# Free space below which the journal evicts oldest first before writing: twice
# the WAL's size (a checkpoint may have to grow the main file by as much) and
# some room for the eviction's own pages.
HEADROOM_BYTES: Final = 2 * WAL_PAGES * 4096 + 256 * 1024

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


class Pending(NamedTuple):
    """A sealed record waiting for its final ack: its sequence and its JSON."""

    seq: int
    body: bytes


class EvictedRange(NamedTuple):
    """Sequences `first..last` dropped for lack of space, not yet reported."""

    first: int
    last: int

    @property
    def size(self) -> int:
        """How many records the range holds."""
        return self.last - self.first + 1


class JournalStats(NamedTuple):
    """What the journal holds now, for status messages."""

    queue_depth: int
    oldest_queued_ts: int | None
    open_plays: int
    last_seq: int
    evicted_total: int
    unreported: tuple[EvictedRange, ...]


class Journal:
    """One device's durable journal; open it with `Journal.open`."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, capacity: int, retention_ms: int
    ) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.capacity = capacity
        self.retention_ms = retention_ms
        self._removals = 0
        # What the last `pending` read found: it stopped at a record ending after
        # `until_ts` (held back), or it took every sealed record there was (caught up).
        self.held_back = False
        self.caught_up = False
        self.journal_id = self._meta("journal_id")
        self.device_id = self._meta("device_id")
        self._last_seq = int(self._meta("last_seq"))
        self._rows: int = conn.execute("SELECT count(*) FROM plays").fetchone()[0]
        self.reset_reason: str | None = None
        self.recovered: list[Record] = []

    # --- opening ------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        device_id: str,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int | None = None,
        retention_ms: int = ledgers.DEFAULT_RETENTION_MS,
        *,
        synchronous: str = "full",
    ) -> Journal:
        """Open (or create) the journal in `data_dir` and close plays a crash left open.

        `synchronous="off"` is for simulations only (docs/fleet.md): commits are
        then not on disk when they return, only in the operating system's hands.
        """
        if synchronous not in SYNC_MODES:
            raise JournalError(f"expected synchronous among {SYNC_MODES}, got {synchronous!r}")
        args = (data_dir, device_id, capacity, max_bytes, retention_ms, synchronous)
        return await run_blocking(cls._open_sync, *args)

    @classmethod
    def _open_sync(
        cls,
        data_dir: Path,
        device_id: str,
        capacity: int,
        max_bytes: int | None,
        retention_ms: int,
        synchronous: str,
    ) -> Journal:
        if capacity < 1:
            raise JournalError(f"journal capacity must be at least 1 record, got {capacity}")
        path = prepare_folder(data_dir) / JOURNAL_FILE
        reset_reason = None
        try:
            conn = _connect(path, device_id, synchronous)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise JournalError(_open_failure(path, exc)) from None
            reset_reason = _move_aside(path, exc)
            conn = _connect(path, device_id, synchronous)
        journal = cls(conn, path, capacity, retention_ms)
        hold_reserve(data_dir)
        journal.reset_reason = reset_reason
        journal._check_owner(device_id)
        journal._limit_size(max_bytes)
        journal._write(ledgers.ensure)
        journal.recovered = journal._recover()
        journal._write(lambda c: ledgers.prune(c, retention_ms))
        return journal

    def _check_owner(self, device_id: str) -> None:
        if self.device_id != device_id:
            self._conn.close()
            raise JournalError(
                f"the journal at {self.path} belongs to device {self.device_id!r}, "
                f"not {device_id!r}; give each device its own data folder"
            )

    def _limit_size(self, max_bytes: int | None) -> None:
        if max_bytes is None:
            return
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {max(16, max_bytes // page_size)}")

    def _recover(self) -> list[Record]:
        """Seal every play left open by a crash as `device_restart`, from its checkpoint."""
        rows = self._conn.execute("SELECT body FROM plays WHERE state = 'open'").fetchall()
        records = []
        for (body,) in rows:
            record = decode_provisional(body)
            record.end_reason = "device_restart"
            seal(record)
            records.append(record)
        if records:
            self._write(lambda c: _seal_rows(c, records))
            log.warning(
                "closed %d play(s) left open by a crash as device_restart: seq %s",
                len(records),
                ", ".join(str(r.seq) for r in records),
            )
        return records

    # --- the write path -----------------------------------------------------

    async def begin(self, record: Record) -> Record:
        """Allocate the next sequence, store the play as open, and return it numbered."""
        return await run_blocking(self._locked, self._begin, record)

    def _begin(self, record: Record) -> Record:
        record.seq = self._last_seq + 1

        def txn(conn: sqlite3.Connection) -> int:
            evicted = self._evict_for(conn, 1)
            conn.execute(
                "INSERT INTO plays (seq, state, end_ts, body) VALUES (?, 'open', ?, ?)",
                (record.seq, record.end_ts, record_json(record)),
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(record.seq),))
            return evicted

        evicted = self._write(txn)
        self._last_seq = record.seq
        self._rows += 1 - evicted
        return record

    async def checkpoint(self, record: Record) -> None:
        """Save the open play's progress: what a crash now would leave of it."""
        await run_blocking(self._locked, self._update, record, "open")

    async def close(self, record: Record) -> None:
        """Store the play's sealed record; from now on it waits for delivery."""
        if not checksum_present(record):
            raise JournalError(f"expected a sealed record to close seq {record.seq}, got none")
        await run_blocking(self._locked, self._update, record, "ready")

    def _update(self, record: Record, state: str) -> None:
        body = record_json(record)
        sql = "UPDATE plays SET state = ?, end_ts = ?, body = ? WHERE seq = ? AND state = 'open'"

        def txn(conn: sqlite3.Connection) -> None:
            if conn.execute(sql, (state, record.end_ts, body, record.seq)).rowcount != 1:
                raise JournalError(f"expected an open play with seq {record.seq}, found none")
            if state == "ready":
                ledgers.sealed(conn, [record])

        self._write(txn)

    async def remove(self, seqs: Sequence[int], outcomes: Sequence[str] | None = None) -> int:
        """Delete records whose ack is final, their outcomes to the ledger; how many were here."""
        if not seqs:
            return 0
        named = list(outcomes) if outcomes is not None else ["final"] * len(seqs)
        return await run_blocking(self._locked, self._remove, list(zip(seqs, named, strict=True)))

    def _remove(self, outcomes: list[tuple[int, str]]) -> int:
        self._removals += 1
        prune = self._removals % PRUNE_EVERY == 0

        def txn(conn: sqlite3.Connection) -> int:
            sql = "DELETE FROM plays WHERE seq = ? AND state = 'ready'"
            removed = conn.executemany(sql, [(seq,) for seq, _ in outcomes]).rowcount
            ledgers.settled(conn, outcomes)
            if prune:
                ledgers.prune(conn, self.retention_ms)
            return removed

        removed = self._write(txn)
        self._rows -= removed
        if removed:
            hold_reserve(self.path.parent)
        return removed

    # --- eviction -----------------------------------------------------------

    def _evict_for(self, conn: sqlite3.Connection, incoming: int) -> int:
        excess = self._rows + incoming - self.capacity
        if excess <= 0 and _disk_low(self.path.parent):
            # Evict while there is still room for checkpoints to land: at zero
            # bytes free even the eviction itself could not be written.
            return self._shed(conn)
        return self._evict(conn, excess) if excess > 0 else 0

    def _shed(self, conn: sqlite3.Connection) -> int:
        """Make room on a full disk: the ledger's settled history, then the oldest records."""
        # Settled history is worth less than any queued record; a full disk
        # overrides its retention (the floor says how far it went).
        ledgers.prune(conn, 0)
        return self._evict(conn, DISK_FULL_EVICTION)

    def _evict(self, conn: sqlite3.Connection, count: int) -> int:
        """Drop the `count` oldest sealed records, note their ranges for reporting: how many."""
        seqs = [
            row[0]
            for row in conn.execute(
                "DELETE FROM plays WHERE seq IN (SELECT seq FROM plays WHERE state = 'ready' "
                "ORDER BY seq LIMIT ?) RETURNING seq",
                (count,),
            )
        ]
        seqs.sort()
        ledgers.evicted(conn, seqs)
        first_of_run = conn.execute("SELECT 1 FROM evictions LIMIT 1").fetchone() is None
        for first, last in _runs(seqs):
            _add_eviction(conn, first, last)
        if seqs:
            total = int(self._meta("evicted_total", conn)) + len(seqs)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'evicted_total'", (str(total),))
            # Loud once per run of evictions (until a status reports them), quiet after.
            log.log(
                logging.WARNING if first_of_run else logging.DEBUG,
                "journal full: evicting the oldest records, seq %d..%d now",
                seqs[0],
                seqs[-1],
            )
        return len(seqs)

    async def unreported_evictions(self) -> tuple[EvictedRange, ...]:
        """Ranges evicted since the last status that reached the service."""
        return await run_blocking(self._locked, self._unreported)

    def _unreported(self) -> tuple[EvictedRange, ...]:
        rows = self._conn.execute("SELECT first_seq, last_seq FROM evictions ORDER BY first_seq")
        return tuple(EvictedRange(first, last) for first, last in rows)

    async def evictions_reported(self, ranges: Iterable[EvictedRange]) -> None:
        """Forget ranges a status message delivered; a range grown since keeps its new part."""
        await run_blocking(self._locked, self._reported, tuple(ranges))

    def _reported(self, ranges: tuple[EvictedRange, ...]) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            for first, last in ranges:
                conn.execute(
                    "DELETE FROM evictions WHERE first_seq = ? AND last_seq = ?", (first, last)
                )
                conn.execute(
                    "UPDATE evictions SET first_seq = ? WHERE first_seq = ? AND last_seq > ?",
                    (last + 1, first, last),
                )

        self._write(txn)

    # --- the read path ------------------------------------------------------

    async def pending(
        self,
        after: int = 0,
        limit: int = 1000,
        max_bytes: int = 1 << 20,
        until_ts: int | None = None,
    ) -> list[Pending]:
        """Sealed records above seq `after`, oldest first, within both limits.

        The list stops before the first record ending after `until_ts`: a record
        stamped before an offset correction can end in the future of the corrected
        clock, and the service would reject it; it waits for the clock, in order.
        """
        return await run_blocking(self._locked, self._pending, after, limit, max_bytes, until_ts)

    def _pending(
        self, after: int, limit: int, max_bytes: int, until_ts: int | None
    ) -> list[Pending]:
        rows = self._conn.execute(
            "SELECT seq, end_ts, body FROM plays WHERE state = 'ready' AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (after, limit),
        )
        out: list[Pending] = []
        size = 0
        self.held_back = False
        for seq, end, body in rows:
            size += len(body) + 1
            if (out and size > max_bytes) or (until_ts is not None and end > until_ts):
                self.held_back = until_ts is not None and end > until_ts
                self.caught_up = False
                return out
            out.append(Pending(seq, bytes(body)))
        self.caught_up = len(out) < limit
        return out

    async def stats(self) -> JournalStats:
        """Queue depth, oldest queued end time, evictions: what a status message reports."""
        return await run_blocking(self._locked, self._stats)

    def _stats(self) -> JournalStats:
        ready, oldest = self._conn.execute(
            "SELECT count(*), min(end_ts) FROM plays WHERE state = 'ready'"
        ).fetchone()
        open_plays = self._rows - ready
        evicted = int(self._meta("evicted_total"))
        return JournalStats(ready, oldest, open_plays, self._last_seq, evicted, self._unreported())

    async def count_older_than(self, end_ts: int) -> int:
        """How many queued records ended before `end_ts` (those the service will call stale)."""
        return await run_blocking(self._locked, self._count_older, end_ts)

    def _count_older(self, end_ts: int) -> int:
        sql = "SELECT count(*) FROM plays WHERE state = 'ready' AND end_ts < ?"
        count: int = self._conn.execute(sql, (end_ts,)).fetchone()[0]
        return count

    @property
    def last_seq(self) -> int:
        """The highest sequence ever allocated by this journal."""
        return self._last_seq

    async def ledger(self) -> ledgers.LedgerView:
        """What this journal recorded and what became of each record (see ledger.py)."""
        return await run_blocking(self._locked, ledgers.view, self._conn)

    @property
    def size(self) -> int:
        """Plays held now, open and sealed, known without reading the file."""
        return self._rows

    async def aclose(self) -> None:
        """Close the database file; the journal cannot be used afterwards."""
        await run_blocking(self._locked, self._conn.close)

    # --- helpers ------------------------------------------------------------

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            return fn(*args)

    def _meta(self, key: str, conn: sqlite3.Connection | None = None) -> str:
        row = (conn or self._conn).execute("SELECT value FROM meta WHERE key = ?", (key,))
        found = row.fetchone()
        if found is None:
            raise JournalError(f"journal {self.path} has no {key!r}: it is not a playproof journal")
        value: str = found[0]
        return value

    def _write(self, txn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `txn` in one durable transaction; make room once if the disk is full."""
        try:
            return _transaction(self._conn, txn)
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise JournalError(f"journal {self.path}: {exc}") from None
        log.error("journal %s: disk full; evicting the oldest records to make room", self.path)
        try:
            self._make_room()
            return _transaction(self._conn, txn)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: disk full, cannot write: {exc}") from None

    def _make_room(self) -> None:
        # Move the WAL into the main file and restart it at its beginning, give
        # back the reserve if it is still held, then evict: the eviction then
        # writes into space the journal owns, and frees pages for new records.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)")
        release_reserve(self.path.parent)
        self._rows -= _transaction(self._conn, self._shed)


# --- module helpers ---------------------------------------------------------


def prepare_folder(data_dir: Path) -> Path:
    """The data folder, created if missing; JournalError when it cannot be written."""
    if data_dir.exists() and not data_dir.is_dir():
        raise JournalError(f"data folder {data_dir} exists but is not a folder")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create data folder {data_dir}: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise JournalError(f"data folder {data_dir} is not writable by this user")
    return data_dir


def _disk_low(data_dir: Path) -> bool:
    """Whether the filesystem under the journal has less free space than the headroom."""
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < HEADROOM_BYTES


def hold_reserve(data_dir: Path) -> None:
    """Keep a reserve file of RESERVE_BYTES beside the journal, when there is room for it.

    Freed when the disk fills, it gives the first eviction room to run; it is
    taken back once deliveries have freed space again.
    """
    reserve = data_dir / RESERVE_FILE
    if reserve.exists():
        return
    try:
        fd = os.open(reserve, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        reserve.unlink(missing_ok=True)


def release_reserve(data_dir: Path) -> None:
    """Give the reserve's space back to the filesystem."""
    with contextlib.suppress(OSError):
        (data_dir / RESERVE_FILE).unlink()


def _connect(path: Path, device_id: str, synchronous: str = "full") -> sqlite3.Connection:
    """Open the SQLite file, creating the journal in one transaction when it is new."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _configure(conn, synchronous)
        if not _has_meta(conn):
            _create(conn, device_id)
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def _open_failure(path: Path, exc: sqlite3.DatabaseError) -> str:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
        return f"journal {path} is in use by another process; give each device its own folder"
    return f"cannot open journal {path}: {exc}"


def _configure(conn: sqlite3.Connection, synchronous: str = "full") -> None:
    # Exclusive locking: one process per journal, and the WAL index lives in memory
    # (no -shm file), which saves a file descriptor per device.
    conn.execute("PRAGMA busy_timeout = 1000")
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise sqlite3.DatabaseError(f"expected WAL journal mode, got {mode}")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    # A small WAL, checkpointed often, keeps the data in the main file and the
    # WAL's own space reused rather than grown: on a full disk the evictions
    # that make room must fit in space the journal already holds.
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {check}")


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

    _transaction(conn, txn)
    log.info("created journal %s for device %s", journal_id, device_id)


def _move_aside(path: Path, exc: sqlite3.DatabaseError) -> str:
    """Rename a corrupt journal (and its WAL) out of the way; say so loudly."""
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


def _transaction(conn: sqlite3.Connection, txn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = txn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Corrupt or foreign content (our own checks raise without an error code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (None, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _seal_rows(conn: sqlite3.Connection, records: list[Record]) -> None:
    conn.executemany(
        "UPDATE plays SET state = 'ready', end_ts = ?, body = ? WHERE seq = ?",
        [(r.end_ts, record_json(r), r.seq) for r in records],
    )
    ledgers.sealed(conn, records)


def _add_eviction(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Extend the latest unreported range when contiguous, else start a new one."""
    row = conn.execute(
        "SELECT first_seq, last_seq FROM evictions ORDER BY first_seq DESC LIMIT 1"
    ).fetchone()
    if row is not None and row[1] + 1 == first:
        conn.execute("UPDATE evictions SET last_seq = ? WHERE first_seq = ?", (last, row[0]))
    else:
        conn.execute("INSERT INTO evictions (first_seq, last_seq) VALUES (?, ?)", (first, last))


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and runs[-1][1] + 1 == seq:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def checksum_present(record: Record) -> bool:
    """Whether the record has been sealed."""
    return isinstance(record.checksum, str)


def decode_provisional(body: bytes) -> Record:
    """A journal body as a Record; an open play's body carries no checksum yet."""
    try:
        return msgspec.json.decode(body, type=Record)
    except msgspec.ValidationError as exc:
        raise JournalError(f"a journal row does not hold a record: {exc}") from None
