"""The device journal: a crash-safe SQLite queue of plays, with a persistent sequence.

One file in the device's data folder, WAL mode, `synchronous=FULL`: a commit is
on disk when it returns (`journalfile.py`). A play is written when it starts (its
sequence allocated and persisted in the same transaction), checkpointed while it
plays, and sealed when it ends. A record leaves only when the service's ack is
final (accepted, duplicate or rejected), or when time and space force an eviction
(`eviction.py`): oldest first, counted, and kept as ranges until a status message
has reported them. The ledger (`ledger.py`) notes, in the same transactions, what
became of each sealed record, for reconciliation.

The public API is asyncio; the SQLite work runs on the shared pool
(`blocking.run_blocking`), one call at a time per journal.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET

from playproof.device import eviction
from playproof.device import ledger as ledgers
from playproof.device.blocking import run_blocking
from playproof.device.diskspace import disk_low, hold_reserve, prepare_folder, release_reserve
from playproof.device.eviction import (
    DEFAULT_CAPACITY,
    DEFAULT_KEEP_MS,
    DEFAULT_QUEUE_BYTES,
    Bounds,
    EvictedRange,
    Removed,
)
from playproof.device.journalfile import (
    JOURNAL_FILE,
    SYNC_MODES,
    connect,
    is_corrupt,
    is_full,
    move_aside,
    open_failure,
    synchronous_mode,
    transaction,
)
from playproof.errors import JournalError
from playproof.protocol import VERSION, Record, record_json, seal

# Names other modules (and older callers) import from here.
__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_KEEP_MS",
    "DEFAULT_QUEUE_BYTES",
    "JOURNAL_FILE",
    "SYNC_MODES",
    "EvictedRange",
    "Journal",
    "JournalStats",
    "Pending",
    "checksum_present",
    "decode_provisional",
    "prepare_folder",
    "seal_v1",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Prune the ledger's settled prefix once every this many removals.
PRUNE_EVERY: Final = 500


class Pending(NamedTuple):
    """A sealed record waiting for its final ack: its sequence and its JSON."""

    seq: int
    body: bytes


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
        self, conn: sqlite3.Connection, path: Path, bounds: Bounds, retention_ms: int
    ) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.bounds = bounds
        self.retention_ms = retention_ms
        self._removals = 0
        # What the last `pending` read found: it stopped at a record ending after
        # `until_ts` (held back), or it took every sealed record there was (caught up).
        self.held_back = False
        self.caught_up = False
        self.journal_id = self._meta("journal_id")
        self.device_id = self._meta("device_id")
        self._last_seq = int(self._meta("last_seq"))
        self._highest_sealed = 0
        self._late_sealed: int | None = None
        # Kept in memory, so that bounding the queue reads nothing of the file.
        self._rows: int = conn.execute("SELECT count(*) FROM plays").fetchone()[0]
        self._bytes = self._queued_bytes()
        self.reset_reason: str | None = None
        self.recovered: list[Record] = []
        # How plays a crash left open are sealed (keys.DeviceKey.seal_recovered signs
        # them once the device key is acknowledged).
        self.reseal: Callable[[Record], Record] = seal_v1

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
        keep_ms: int = DEFAULT_KEEP_MS,
        queue_max_bytes: int = DEFAULT_QUEUE_BYTES,
        reseal: Callable[[Record], Record] | None = None,
    ) -> Journal:
        """Open (or create) the journal in `data_dir` and close plays a crash left open.

        Records that ended less than `keep_ms` ago are never evicted for their
        number (`capacity`); past `queue_max_bytes` of queued records, or a
        `max_bytes` file, the oldest go whatever their age (see eviction.py).
        `synchronous="off"` is for simulations only (docs/fleet.md): commits are
        then not on disk when they return, only in the operating system's hands.
        """
        if synchronous not in SYNC_MODES:
            raise JournalError(f"expected synchronous among {SYNC_MODES}, got {synchronous!r}")
        try:
            bounds = Bounds(capacity, keep_ms, queue_max_bytes).check()
        except ValueError as exc:
            raise JournalError(str(exc)) from None
        args = (data_dir, device_id, bounds, max_bytes, retention_ms, synchronous, reseal)
        return await run_blocking(cls._open_sync, *args)

    @classmethod
    def _open_sync(
        cls,
        data_dir: Path,
        device_id: str,
        bounds: Bounds,
        max_bytes: int | None,
        retention_ms: int,
        synchronous: str,
        reseal: Callable[[Record], Record] | None = None,
    ) -> Journal:
        path = prepare_folder(data_dir) / JOURNAL_FILE
        reset_reason = None
        try:
            conn = connect(path, device_id, synchronous)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise JournalError(open_failure(path, exc)) from None
            reset_reason = move_aside(path, exc)
            conn = connect(path, device_id, synchronous)
        journal = cls(conn, path, bounds, retention_ms)
        hold_reserve(data_dir)
        journal.reset_reason = reset_reason
        if reseal is not None:
            journal.reseal = reseal
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
            records.append(self.reseal(record))
        if records:
            self._write(lambda c: _seal_rows(c, records))
            self._bytes = self._queued_bytes()
            log.warning(
                "closed %d play(s) left open by a crash as device_restart: seq %s",
                len(records),
                ", ".join(str(r.seq) for r in records),
            )
        return records

    @property
    def synchronous(self) -> str:
        """The journal connection's `synchronous` setting, read from SQLite: `full` for real."""
        with self._lock:
            return synchronous_mode(self._conn)

    # --- the write path -----------------------------------------------------

    async def begin(self, record: Record) -> Record:
        """Allocate the next sequence, store the play as open, and return it numbered."""
        return await run_blocking(self._locked, self._begin, record)

    def _begin(self, record: Record) -> Record:
        record.seq = self._last_seq + 1
        body = record_json(record)

        def txn(conn: sqlite3.Connection) -> Removed:
            evicted = self._make_way(conn, record.start_ts, len(body))
            conn.execute(
                "INSERT INTO plays (seq, state, end_ts, body) VALUES (?, 'open', ?, ?)",
                (record.seq, record.end_ts, body),
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(record.seq),))
            return evicted

        evicted = self._write(txn)
        self._last_seq = record.seq
        self._rows += 1 - evicted.records
        self._bytes += len(body) - evicted.size
        return record

    async def checkpoint(self, record: Record) -> None:
        """Save the open play's progress: what a crash now would leave of it."""
        await run_blocking(self._locked, self._update, record, "open")

    async def close(self, record: Record) -> None:
        """Store the play's sealed record; from now on it waits for delivery."""
        if not checksum_present(record):
            raise JournalError(f"expected a sealed record to close seq {record.seq}, got none")
        await run_blocking(self._locked, self._update, record, "ready")
        # A play that ends after one started later (a banner over the main item) is
        # sealed below what the uplink has already read past: tell it to look back.
        if record.seq < self._highest_sealed:
            late = self._late_sealed
            self._late_sealed = record.seq if late is None else min(late, record.seq)
        self._highest_sealed = max(self._highest_sealed, record.seq)

    def take_late_sealed(self) -> int | None:
        """The lowest seq sealed after a higher one since the last call (then forgotten)."""
        late, self._late_sealed = self._late_sealed, None
        return late

    def _update(self, record: Record, state: str) -> None:
        body = record_json(record)
        old = "SELECT length(body) FROM plays WHERE seq = ? AND state = 'open'"
        sql = "UPDATE plays SET state = ?, end_ts = ?, body = ? WHERE seq = ? AND state = 'open'"

        def txn(conn: sqlite3.Connection) -> int:
            found = conn.execute(old, (record.seq,)).fetchone()
            if found is None:
                raise JournalError(f"expected an open play with seq {record.seq}, found none")
            conn.execute(sql, (state, record.end_ts, body, record.seq))
            if state == "ready":
                ledgers.sealed(conn, [record])
            return len(body) - int(found[0])

        self._bytes += self._write(txn)

    async def remove(self, seqs: Sequence[int], outcomes: Sequence[str] | None = None) -> int:
        """Delete records whose ack is final, their outcomes to the ledger; how many were here."""
        if not seqs:
            return 0
        named = list(outcomes) if outcomes is not None else ["final"] * len(seqs)
        return await run_blocking(self._locked, self._remove, list(zip(seqs, named, strict=True)))

    def _remove(self, outcomes: list[tuple[int, str]]) -> int:
        self._removals += 1
        prune = self._removals % PRUNE_EVERY == 0

        def txn(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            gone = eviction.delete_sealed(conn, [seq for seq, _ in outcomes])
            ledgers.settled(conn, outcomes)
            if prune:
                ledgers.prune(conn, self.retention_ms)
            return gone

        gone = self._write(txn)
        self._rows -= len(gone)
        self._bytes -= sum(size for _, size in gone)
        if gone:
            hold_reserve(self.path.parent)
        return len(gone)

    # --- eviction (the rules are in eviction.py) ----------------------------

    def _make_way(self, conn: sqlite3.Connection, now_ts: int, incoming: int) -> Removed:
        """Evict what the bounds say must go before a play of `incoming` bytes starting now."""
        bounds = self.bounds
        seqs = eviction.victims(
            conn,
            over_count=self._rows + 1 - bounds.capacity,
            older_than=now_ts - bounds.keep_ms,
            over_bytes=self._bytes + incoming - bounds.queue_max_bytes,
        )
        if not seqs and disk_low(self.path.parent):
            # Evict while there is still room for checkpoints to land: at zero
            # bytes free even the eviction itself could not be written.
            return self._shed(conn)
        return eviction.evict(conn, seqs)

    def _shed(self, conn: sqlite3.Connection) -> Removed:
        """Make room on a full disk: the ledger's settled history, then the oldest records."""
        # Settled history is worth less than any queued record; a full disk
        # overrides its retention (the floor says how far it went).
        ledgers.prune(conn, 0)
        return eviction.evict(conn, eviction.oldest(conn, eviction.DISK_FULL_EVICTION))

    async def unreported_evictions(self) -> tuple[EvictedRange, ...]:
        """Ranges evicted since the last status that reached the service."""
        return await run_blocking(self._locked, eviction.unreported, self._conn)

    async def evictions_reported(self, ranges: Iterable[EvictedRange]) -> None:
        """Forget ranges a status message delivered; a range grown since keeps its new part."""
        kept = tuple(ranges)
        await run_blocking(self._locked, self._write, lambda c: eviction.reported(c, kept))

    # --- the read path ------------------------------------------------------

    async def pending(
        self,
        after: int = 0,
        limit: int = 1000,
        max_bytes: int = 1 << 20,
        until_ts: int | None = None,
        skip: Collection[int] = (),
    ) -> list[Pending]:
        """Sealed records above seq `after`, oldest first, within both limits.

        The list stops before the first record ending after `until_ts`: a record
        stamped before an offset correction can end in the future of the corrected
        clock, and the service would reject it; it waits for the clock, in order.
        """
        return await run_blocking(
            self._locked, self._pending, after, limit, max_bytes, until_ts, skip
        )

    def _pending(
        self, after: int, limit: int, max_bytes: int, until_ts: int | None, skip: Collection[int]
    ) -> list[Pending]:
        # `skip`: records sent and not yet acknowledged (read past them, never resend).
        found = self._conn.execute(
            "SELECT seq, end_ts, body FROM plays WHERE state = 'ready' AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (after, limit + len(skip)),
        )
        rows = [row for row in found if row[0] not in skip][:limit]
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
        ranges = eviction.unreported(self._conn)
        return JournalStats(ready, oldest, open_plays, self._last_seq, evicted, ranges)

    async def count_older_than(self, end_ts: int) -> int:
        """How many queued records ended before `end_ts` (those the service will call stale)."""
        return await run_blocking(self._locked, self._count_older, end_ts)

    def _count_older(self, end_ts: int) -> int:
        sql = "SELECT count(*) FROM plays WHERE state = 'ready' AND end_ts < ?"
        count: int = self._conn.execute(sql, (end_ts,)).fetchone()[0]
        return count

    async def has_unsigned(self) -> bool:
        """Whether a version-1 record waits for delivery (see keys.Registrar)."""
        return await run_blocking(self._locked, self._has_unsigned)

    def _has_unsigned(self) -> bool:
        sql = (
            "SELECT 1 FROM plays WHERE state = 'ready' "
            "AND json_extract(CAST(body AS TEXT), '$.v') = 1 LIMIT 1"
        )
        return self._conn.execute(sql).fetchone() is not None

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

    @property
    def queue_bytes(self) -> int:
        """Bytes of the plays held now (their JSON), known without reading the file."""
        return self._bytes

    async def aclose(self) -> None:
        """Close the database file; the journal cannot be used afterwards."""
        await run_blocking(self._locked, self._conn.close)

    # --- helpers ------------------------------------------------------------

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            return fn(*args)

    def _queued_bytes(self) -> int:
        size: int = self._conn.execute(
            "SELECT coalesce(sum(length(body)), 0) FROM plays"
        ).fetchone()[0]
        return size

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
            return transaction(self._conn, txn)
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise JournalError(f"journal {self.path}: {exc}") from None
        log.error("journal %s: disk full; evicting the oldest records to make room", self.path)
        try:
            self._make_room()
            return transaction(self._conn, txn)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: disk full, cannot write: {exc}") from None

    def _make_room(self) -> None:
        # Move the WAL into the main file and restart it at its beginning, give
        # back the reserve if it is still held, then evict: the eviction then
        # writes into space the journal owns, and frees pages for new records.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)")
        release_reserve(self.path.parent)
        gone = transaction(self._conn, self._shed)
        self._rows -= gone.records
        self._bytes -= gone.size


# --- module helpers ---------------------------------------------------------


def checksum_present(record: Record) -> bool:
    """Whether the record has been sealed."""
    return isinstance(record.checksum, str)


def decode_provisional(body: bytes) -> Record:
    """A journal body as a Record; an open play's body carries no checksum yet."""
    try:
        return msgspec.json.decode(body, type=Record)
    except msgspec.ValidationError as exc:
        raise JournalError(f"a journal row does not hold a record: {exc}") from None


def seal_v1(record: Record) -> Record:
    """Seal `record` as version 1: the version-2 fields removed, the checksum set."""
    record.v = VERSION
    record.key_id = record.sig = record.panel_state = record.panel_source = UNSET
    return seal(record)


def look_back(journal: Journal, cursor: int) -> int:
    """A sender's read cursor, moved back below any play sealed behind it since it last read."""
    late = journal.take_late_sealed()
    return cursor if late is None or late > cursor else late - 1


def _seal_rows(conn: sqlite3.Connection, records: list[Record]) -> None:
    conn.executemany(
        "UPDATE plays SET state = 'ready', end_ts = ?, body = ? WHERE seq = ?",
        [(r.end_ts, record_json(r), r.seq) for r in records],
    )
    ledgers.sealed(conn, records)
