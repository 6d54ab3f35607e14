"""The embedded default store: one SQLite file in WAL mode with `synchronous=FULL`.

All writes go through one thread and one connection, so transactions never
contend inside the process; the ingest service's group committer hands that
thread many batches at once. Reads use their own connections, which WAL lets
run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from playproof.errors import Conflict, NotFound, SchemaMismatch, StoreError, StoreUnavailable
from playproof.protocol import Ack, Status, decode_status, encode
from playproof.rules import Gap, SequenceChange, SequenceState
from playproof.stores import migrations
from playproof.stores.base import (
    IMPRESSION_COLUMNS,
    REJECT_COLUMNS,
    BatchWrite,
    Credential,
    DeviceInfo,
    JournalInfo,
    JournalKey,
    Key,
    RejectInfo,
    StatusInfo,
    needs_lookup,
    plan_commit,
    sequence_changes,
    status_info,
    tracked_keys,
)
from playproof.stores.blobs import BlobStore

T = TypeVar("T")

_INSERT_IMPRESSION = (
    f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(IMPRESSION_COLUMNS))})"
)
_UPSERT_REJECT = (
    f"INSERT INTO rejects ({', '.join(REJECT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(REJECT_COLUMNS))}) "
    "ON CONFLICT (device_id, journal_id, seq, checksum, reason) "
    "DO UPDATE SET times = times + 1, received_at = excluded.received_at"
)
_UPSERT_JOURNAL = (
    "INSERT INTO journals (device_id, journal_id, high_water, high_water_ts, first_seen, "
    "last_seen) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, journal_id) DO UPDATE SET "
    "high_water = excluded.high_water, high_water_ts = excluded.high_water_ts, "
    "last_seen = excluded.last_seen"
)
_EXISTING = (
    "SELECT seq, checksum FROM impressions WHERE device_id = ? AND journal_id = ? "
    "AND seq IN (SELECT value FROM json_each(?))"
)


def _translate(exc: sqlite3.Error, doing: str) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"SQLite cannot {doing} now: {exc}")
    return StoreError(f"SQLite failed to {doing}: {exc}")


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas every playproof connection needs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class SqliteStore:
    """The store interface on one SQLite file, screenshots in a folder beside it."""

    commit_lanes = 1

    def __init__(self, path: Path, blob_dir: Path | None = None) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.blobs = BlobStore(blob_dir or path.with_name(path.stem + ".blobs"))
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None

    # --- plumbing -----------------------------------------------------------

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            self._wconn = connect(self.path)
        return self._wconn

    async def _write(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._writer_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise _translate(exc, doing) from exc
            except BaseException:
                _rollback(conn)
                raise
            return result

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def _read(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return fn(self._reader_conn())
            except sqlite3.Error as exc:
                raise _translate(exc, doing) from exc

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    # --- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed and bring its schema up to date."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc.strerror}") from None
        await asyncio.get_running_loop().run_in_executor(self._writer, self._migrate)

    def _migrate(self) -> None:
        try:
            conn = self._writer_conn()
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for step in migrations.pending("sqlite", current):
                conn.execute("BEGIN IMMEDIATE")
                for statement in _statements(step.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(step.version)}")
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise SchemaMismatch(f"{self.path} is not a usable playproof database: {exc}") from None

    async def schema_version(self) -> int:
        """The version of the schema in the file."""
        return await self._read("read the schema version", _user_version)

    async def close(self) -> None:
        """Close connections and stop the threads."""
        self._writer.submit(self._close_writer).result()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a read succeeds now."""
        await self._read("answer a ping", lambda c: c.execute("SELECT 1").fetchone())

    # --- ingest -------------------------------------------------------------

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        """Commit every batch in one transaction and return their acks."""
        return await self._write("commit impressions", lambda c: _commit(c, writes))

    # --- devices ------------------------------------------------------------

    async def add_device(self, device: DeviceInfo, token_hash: str) -> None:
        """Register a device; Conflict if its id is taken."""

        def add(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO devices (device_id, store_id, token_hash, created_at, "
                    "revoked_at) VALUES (?, ?, ?, ?, ?)",
                    (*device[:2], token_hash, *device[2:]),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"device {device.device_id!r} is already registered") from None

        await self._write("register a device", add)

    async def device_for_token(self, token_hash: str) -> Credential | None:
        """The device holding this token hash, with the stored hash."""
        return await self._read("look up a token", lambda c: _credential(c, token_hash))

    async def get_device(self, device_id: str) -> DeviceInfo | None:
        """One registered device."""
        return await self._read(
            "look up a device", lambda c: _one_device(c, "device_id", device_id)
        )

    async def list_devices(self) -> list[DeviceInfo]:
        """Every registered device."""
        sql = "SELECT device_id, store_id, created_at, revoked_at FROM devices ORDER BY device_id"
        rows = await self._read("list devices", lambda c: c.execute(sql).fetchall())
        return [DeviceInfo(*row) for row in rows]

    async def revoke_device(self, device_id: str, now: int) -> None:
        """Revoke a device's token; NotFound if unknown."""

        def revoke(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?) WHERE device_id = ?",
                (now, device_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no device {device_id!r} is registered")

        await self._write("revoke a device", revoke)

    async def rotate_device(self, device_id: str, token_hash: str) -> None:
        """Give a device a new token hash; NotFound if unknown."""

        def rotate(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE devices SET token_hash = ?, revoked_at = NULL WHERE device_id = ?",
                (token_hash, device_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no device {device_id!r} is registered")

        await self._write("rotate a token", rotate)

    # --- health -------------------------------------------------------------

    async def save_status(self, status: Status, received_at: int) -> None:
        """Keep the device's latest status; add its evictions to the running record."""
        await self._write("save a status", lambda c: _save_status(c, status, received_at))

    async def latest_status(self, device_id: str) -> StatusInfo | None:
        """The device's latest status and accumulated evictions."""
        return await self._read("read a status", lambda c: _latest_status(c, device_id))

    async def add_screenshot(
        self, sha256: str, content_type: str, size: int, device_id: str, now: int
    ) -> bool:
        """Record a screenshot blob; False when it was known already."""
        sql = (
            "INSERT INTO screenshots (sha256, content_type, size, device_id, received_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING"
        )
        params = (sha256, content_type, size, device_id, now)
        return await self._write(
            "record a screenshot", lambda c: c.execute(sql, params).rowcount > 0
        )

    async def journals(self, device_id: str | None = None) -> list[JournalInfo]:
        """Sequence state per (device, journal), with open gaps."""
        return await self._read("read sequence state", lambda c: _journals(c, device_id))

    async def gap_count(self) -> int:
        """Open sequence gaps over every journal."""
        row = await self._read(
            "count gaps", lambda c: c.execute("SELECT count(*) FROM gaps").fetchone()
        )
        return int(row[0])

    async def rejects(
        self, device_id: str | None = None, reason: str | None = None, limit: int = 100
    ) -> list[RejectInfo]:
        """Rejected records, newest first."""
        return await self._read("read rejects", lambda c: _rejects(c, device_id, reason, limit))

    async def execute_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (for reports and tests)."""
        return await self._read("run a query", lambda c: c.execute(sql, params).fetchall())


# --- helpers, run on the store's threads ------------------------------------


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _statements(script: str) -> Iterable[str]:
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


def _one_device(conn: sqlite3.Connection, column: str, value: str) -> DeviceInfo | None:
    row = conn.execute(
        f"SELECT device_id, store_id, created_at, revoked_at FROM devices WHERE {column} = ?",
        (value,),
    ).fetchone()
    return DeviceInfo(*row) if row else None


def _credential(conn: sqlite3.Connection, token_hash: str) -> Credential | None:
    row = conn.execute(
        "SELECT device_id, store_id, created_at, revoked_at, token_hash FROM devices "
        "WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    return Credential(DeviceInfo(*row[:4]), row[4]) if row else None


def _load_state(conn: sqlite3.Connection, key: JournalKey, low: int) -> SequenceState | None:
    row = conn.execute(
        "SELECT high_water, high_water_ts FROM journals WHERE device_id = ? AND journal_id = ?",
        key,
    ).fetchone()
    if row is None:
        return None
    gaps: tuple[Gap, ...] = ()
    if low <= row[0]:
        gaps = tuple(_gaps(conn, key))
    return SequenceState(row[0], row[1], gaps)


def _gaps(conn: sqlite3.Connection, key: JournalKey) -> list[Gap]:
    rows = conn.execute(
        "SELECT first_seq, last_seq, before_ts, after_ts FROM gaps "
        "WHERE device_id = ? AND journal_id = ? ORDER BY first_seq",
        key,
    ).fetchall()
    return [Gap(*row) for row in rows]


def _existing(
    conn: sqlite3.Connection, key: JournalKey, seqs: list[int]
) -> Iterable[tuple[Key, str]]:
    for seq, checksum in conn.execute(_EXISTING, (*key, json.dumps(seqs))):
        yield (key[0], key[1], seq), checksum


def _commit(conn: sqlite3.Connection, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
    keys = tracked_keys(writes)
    states = {k: _load_state(conn, k, min(seqs)) for k, seqs in keys.items()}
    existing: dict[Key, str] = {}
    for key, seqs in keys.items():
        lookup = needs_lookup(seqs, states[key])
        if lookup:
            existing.update(_existing(conn, key, lookup))
    plan = plan_commit(writes, existing)
    conn.executemany(_INSERT_IMPRESSION, plan.impressions)
    conn.executemany(_UPSERT_REJECT, plan.rejects)
    known = {k: s for k, s in states.items() if s is not None}
    now = max(w.received_at for w in writes)
    _save_sequences(conn, sequence_changes(plan.arrivals, known), now)
    return plan.acks


def _save_sequences(
    conn: sqlite3.Connection, changes: dict[JournalKey, SequenceChange], now: int
) -> None:
    for key, change in changes.items():
        if change.closed:
            conn.executemany(
                "DELETE FROM gaps WHERE device_id = ? AND journal_id = ? AND first_seq = ?",
                [(*key, gap.first) for gap in change.closed],
            )
        if change.opened:
            conn.executemany(
                "INSERT INTO gaps (device_id, journal_id, first_seq, last_seq, before_ts, "
                "after_ts) VALUES (?, ?, ?, ?, ?, ?)",
                [(*key, *gap) for gap in change.opened],
            )
        state = change.state
        conn.execute(_UPSERT_JOURNAL, (*key, state.high_water, state.high_water_ts, now, now))


def _save_status(conn: sqlite3.Connection, status: Status, received_at: int) -> None:
    conn.execute(
        "INSERT INTO device_status (device_id, received_at, payload, evicted_total) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
        "received_at = excluded.received_at, payload = excluded.payload, "
        "evicted_total = evicted_total + excluded.evicted_total",
        (status.device_id, received_at, encode(status).decode(), status.evicted),
    )
    conn.executemany(
        "INSERT INTO evictions (device_id, journal_id, first_seq, last_seq, reported_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (status.device_id, status.journal_id or "", first, last, received_at)
            for first, last in status.evicted_ranges
        ],
    )


def _latest_status(conn: sqlite3.Connection, device_id: str) -> StatusInfo | None:
    row = conn.execute(
        "SELECT received_at, payload, evicted_total FROM device_status WHERE device_id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    ranges = conn.execute(
        "SELECT journal_id, first_seq, last_seq FROM evictions WHERE device_id = ? "
        "ORDER BY journal_id, first_seq",
        (device_id,),
    ).fetchall()
    return status_info(device_id, row[0], decode_status(row[1].encode()), ranges)


def _journals(conn: sqlite3.Connection, device_id: str | None) -> list[JournalInfo]:
    sql = "SELECT device_id, journal_id, high_water, first_seen, last_seen FROM journals"
    params: tuple[str, ...] = ()
    if device_id is not None:
        sql += " WHERE device_id = ?"
        params = (device_id,)
    rows = conn.execute(sql + " ORDER BY device_id, first_seen, journal_id", params).fetchall()
    return [
        JournalInfo(device, journal, high, first, last, tuple(_gaps(conn, (device, journal))))
        for device, journal, high, first, last in rows
    ]


def _rejects(
    conn: sqlite3.Connection, device_id: str | None, reason: str | None, limit: int
) -> list[RejectInfo]:
    where, params = [], []
    if device_id is not None:
        where.append("submitted_by = ?")
        params.append(device_id)
    if reason is not None:
        where.append("reason = ?")
        params.append(reason)
    sql = (
        "SELECT id, submitted_by, device_id, journal_id, seq, checksum, reason, detail, raw, "
        "sent_at, received_at, times FROM rejects"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [RejectInfo(*row) for row in rows]
