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
import os
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Final, TypeVar

from playproof.catalog import Catalog, Change
from playproof.errors import (
    Conflict,
    NotFound,
    SchemaMismatch,
    StoreDataError,
    StoreError,
    StoreUnavailable,
)
from playproof.protocol import Ack, Status, decode_status, encode
from playproof.rules import Gap, SequenceChange, SequenceState
from playproof.stores import migrations
from playproof.stores import sqlite_verdicts as verdicts
from playproof.stores.base import (
    IMPRESSION_COLUMNS,
    REJECT_COLUMNS,
    BatchWrite,
    Credential,
    DeviceInfo,
    HeldRecords,
    JournalInfo,
    JournalKey,
    Key,
    OperatorCredential,
    OperatorInfo,
    RejectInfo,
    StatusInfo,
    needs_lookup,
    sequence_changes,
    status_info,
    tracked_keys,
)
from playproof.stores.blobs import BlobStore
from playproof.stores.draft import plan_group
from playproof.stores.rollup import ROLLUPS, Rollup, sqlite_upsert
from playproof.stores.verdicts import CatalogState, Facts, ScreenLoad
from playproof.verification import Decision, Play

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


_INSERT_IMPRESSION = BulkInsert(
    f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)})", len(IMPRESSION_COLUMNS)
)
_UPSERT_REJECT = BulkInsert(
    f"INSERT INTO rejects ({', '.join(REJECT_COLUMNS)})",
    len(REJECT_COLUMNS),
    "ON CONFLICT (device_id, journal_id, seq, checksum, reason) "
    "DO UPDATE SET times = times + 1, received_at = excluded.received_at",
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


BUSY_TIMEOUT_MS: Final = 10_000
# The WAL's bound under sustained writes (see SqliteStore._bound_wal).
WAL_LIMIT_BYTES: Final = 64 * 1024 * 1024


def _translate(exc: sqlite3.Error | ValueError, doing: str) -> StoreError:
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
    """Moves the WAL into the database file on a thread of its own, every half second."""

    def __init__(self, path: Path, every_s: float = 0.5) -> None:
        self._path = path
        self._every_s = every_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

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
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})")

    def _last(self) -> None:
        self._checkpoint("TRUNCATE")
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteStore:
    """The store interface on one SQLite file, screenshots in a folder beside it."""

    commit_lanes = 1
    dialect = "sqlite"

    def __init__(
        self, path: Path, blob_dir: Path | None = None, wal_limit_bytes: int = WAL_LIMIT_BYTES
    ) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.blobs = BlobStore(blob_dir or path.with_name(path.stem + ".blobs"))
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None
        self._checkpointer = Checkpointer(path)
        self._wal = path.with_name(path.name + "-wal")
        self._wal_limit = wal_limit_bytes

    # --- plumbing -----------------------------------------------------------

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            self._wconn = connect(self.path)
            # The checkpointer moves the WAL into the file off the commit path;
            # left to the writer, a checkpoint stalls the commit it follows.
            self._wconn.execute("PRAGMA wal_autocheckpoint = 0")
        return self._wconn

    async def _write(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._writer_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
                self._bound_wal(conn)
            except (sqlite3.Error, ValueError) as exc:
                _rollback(conn)
                raise _translate(exc, doing) from exc
            except BaseException:
                _rollback(conn)
                raise
            return result

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        # Under sustained load the checkpointer never catches up with the writer,
        # so the WAL never restarts and would grow without end: past a limit the
        # writer truncates it (the checkpointer has copied most of it already).
        # A reader still on old frames makes it fail at once; the next commit retries.
        try:
            if os.stat(self._wal).st_size <= self._wal_limit:
                return
        except OSError:
            return
        # The batch is committed whatever happens here: never let it fail.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

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
        self._checkpointer.start()

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
        await self._checkpointer.stop()
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

    async def held_records(self, device_ids: Sequence[str]) -> HeldRecords:
        """Every impression of these devices and every reject they submitted, one snapshot."""
        return await self._read("read held records", lambda c: _held(c, device_ids))

    async def mark_replayed(self, outcomes: Sequence[tuple[int, str]], now: int) -> None:
        """Note on reject rows that they were judged again, and what they became."""
        rows = [(now, result, reject_id) for reject_id, result in outcomes]
        sql = "UPDATE rejects SET replayed_at = ?, replay_result = ? WHERE id = ?"
        await self._write("mark rejects replayed", lambda c: c.executemany(sql, rows))

    # --- the catalog and verification ---------------------------------------

    async def load_catalog(self) -> CatalogState:
        """The catalog's active entries, retired campaigns, and the last change's id."""
        return await self._read("read the catalog", _snapshot(verdicts.load_catalog))

    async def update_catalog(
        self, update: Callable[[Catalog], tuple[Catalog, list[Change]]], now: int
    ) -> list[Change]:
        """Apply `update` to the catalog, keep the changes, send affected plays back."""
        return await self._write(
            "update the catalog", lambda c: verdicts.update_catalog(c, update, now)
        )

    async def add_reference(self, content_id: str, sha256: str, phash: str, now: int) -> bool:
        """Keep a reference image's hash for a content."""
        return await self._write(
            "add a reference image",
            lambda c: verdicts.add_reference(c, content_id, sha256, phash, now),
        )

    async def save_screenshot_facts(self, facts: Sequence[Facts]) -> None:
        """Keep what screenshots show."""
        await self._write("keep screenshot facts", lambda c: verdicts.save_facts(c, facts))

    async def load_screen(self, device_id: str, watermark: int, limit: int) -> ScreenLoad:
        """A screen's pending plays up to `watermark`, in stored order, and around."""
        load = _snapshot(lambda c: verdicts.load_screen(c, device_id, watermark, limit))
        return await self._read("read a screen's plays", load)

    async def save_decisions(
        self, decisions: Sequence[tuple[Play, Decision]], now: int, catalog_version: int
    ) -> int:
        """Write decisions of plays still pending; -1 if the catalog changed since."""
        return await self._write(
            "save decisions",
            lambda c: verdicts.save_decisions(c, decisions, now, catalog_version),
        )

    async def execute_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (for reports and tests)."""
        return await self._read("run a query", lambda c: c.execute(sql, params).fetchall())

    # --- operators and reports -----------------------------------------------

    async def add_operator(self, operator: OperatorInfo, token_hash: str) -> None:
        """Register an operator; Conflict if its name or token is taken."""

        def add(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO operators (name, token_hash, created_at, revoked_at) "
                    "VALUES (?, ?, ?, ?)",
                    (operator.name, token_hash, *operator[1:]),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"operator {operator.name!r} is already registered") from None

        await self._write("register an operator", add)

    async def operator_for_token(self, token_hash: str) -> OperatorCredential | None:
        """The operator holding this token hash, with the stored hash."""
        sql = "SELECT name, created_at, revoked_at, token_hash FROM operators WHERE token_hash = ?"
        rows = await self.read_rows(sql, (token_hash,))
        return OperatorCredential(OperatorInfo(*rows[0][:3]), rows[0][3]) if rows else None

    async def list_operators(self) -> list[OperatorInfo]:
        """Every registered operator."""
        rows = await self.read_rows(
            "SELECT name, created_at, revoked_at FROM operators ORDER BY name"
        )
        return [OperatorInfo(*row) for row in rows]

    async def revoke_operator(self, name: str, now: int) -> None:
        """Revoke an operator's token; NotFound if unknown."""

        def revoke(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE operators SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?",
                (now, name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no operator {name!r} is registered")

        await self._write("revoke an operator", revoke)

    async def read_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query with `?` placeholders."""
        return await self._read("read rows", lambda c: c.execute(sql, params).fetchall())

    async def stream_rows(
        self, sql: str, params: Sequence[Any] = (), chunk: int = 5000
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """Rows of one query, `chunk` at a time, on a connection of its own (one snapshot)."""
        loop = asyncio.get_running_loop()

        def start() -> sqlite3.Cursor:
            conn = connect(self.path)
            # An export reads much of the file once: map it rather than copy pages.
            conn.execute("PRAGMA mmap_size = 1073741824")
            return conn.execute(sql, params)

        def fetch(cur: sqlite3.Cursor) -> list[tuple[Any, ...]]:
            return cur.fetchmany(chunk)

        try:
            cur = await loop.run_in_executor(self._readers, start)
        except sqlite3.Error as exc:
            raise _translate(exc, "read rows") from exc
        try:
            while rows := await loop.run_in_executor(self._readers, fetch, cur):
                yield rows
        except sqlite3.Error as exc:
            raise _translate(exc, "read rows") from exc
        finally:
            await loop.run_in_executor(self._readers, cur.connection.close)


# --- helpers, run on the store's threads ------------------------------------


def _snapshot(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """`fn` run inside one read transaction, so that its queries see one snapshot."""

    def run(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    return run


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
    plan, rollups = plan_group(writes, existing)
    _INSERT_IMPRESSION.run(conn, plan.impressions)
    _UPSERT_REJECT.run(conn, plan.rejects)
    for rollup, rows in rollups.items():
        _UPSERT_ROLLUP[rollup].run(conn, rows)
    known = {k: s for k, s in states.items() if s is not None}
    now = max(w.received_at for w in writes)
    _save_sequences(conn, sequence_changes(plan.arrivals, known), now)
    return plan.acks


def _rollup_upsert(rollup: Rollup) -> BulkInsert:
    head, tail = sqlite_upsert(rollup)
    return BulkInsert(head, len(rollup.columns), tail)


_UPSERT_ROLLUP = {rollup: _rollup_upsert(rollup) for rollup in ROLLUPS}


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


_HELD_IMPRESSIONS = (
    "SELECT device_id, journal_id, seq, checksum, status, start_ts, content_id FROM impressions "
    "WHERE device_id IN (SELECT value FROM json_each(?))"
)
_HELD_REJECTS = (
    "SELECT device_id, journal_id, seq, checksum, reason FROM rejects "
    "WHERE submitted_by IN (SELECT value FROM json_each(?)) "
    "AND (replay_result IS NULL OR replay_result NOT IN ('accepted', 'duplicate'))"
)


def _held(conn: sqlite3.Connection, device_ids: Sequence[str]) -> HeldRecords:
    wanted = json.dumps(list(device_ids))
    conn.execute("BEGIN")  # one snapshot for both
    try:
        impressions = conn.execute(_HELD_IMPRESSIONS, (wanted,)).fetchall()
        rejects = conn.execute(_HELD_REJECTS, (wanted,)).fetchall()
    finally:
        conn.execute("COMMIT")
    return HeldRecords(impressions, rejects)


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
