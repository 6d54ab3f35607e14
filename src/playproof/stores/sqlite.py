"""The embedded default store: one SQLite file in WAL mode with `synchronous=FULL`.

All writes go through one thread and one connection, so transactions never
contend inside the process; the ingest service's group committer hands that
thread many batches at once. Reads use their own connections, which WAL lets
run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal

from playproof.catalog import Catalog, Change
from playproof.errors import (
    Conflict,
    NotFound,
    SchemaMismatch,
    StoreUnavailable,
)
from playproof.keylog import KeyEntry
from playproof.protocol import Ack, Status
from playproof.rules import DEFAULT_POLICY
from playproof.stores import migrations, sqlite_billing, sqlite_exports, sqlite_keys
from playproof.stores import sqlite_rows as rows
from playproof.stores import sqlite_verdicts as verdicts
from playproof.stores.base import (
    BatchWrite,
    Credential,
    DeviceInfo,
    DeviceKey,
    HeldRecords,
    JournalInfo,
    OperatorCredential,
    OperatorInfo,
    Reader,
    RejectInfo,
    StatusInfo,
)
from playproof.stores.blobs import BlobStore
from playproof.stores.export_ledger import ExportInfo, ExportRequest
from playproof.stores.sqlite_conn import (
    BUSY_TIMEOUT_MS,
    WAL_LIMIT_BYTES,
    WAL_RESTART_BYTES,
    Checkpointer,
    T,
    connect,
    rollback,
    snapshot,
    statements,
    translate,
    user_version,
)
from playproof.stores.statements import FinalStatement, Rebase
from playproof.stores.verdicts import CatalogState, Facts, ScreenLoad
from playproof.verification import Decision, Play


class SqliteStore:
    """The store interface on one SQLite file, screenshots in a folder beside it."""

    commit_lanes = 1
    dialect = "sqlite"
    max_open_gaps = DEFAULT_POLICY.max_open_gaps

    def __init__(
        self,
        path: Path,
        blob_dir: Path | None = None,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        wal_restart_bytes: int = WAL_RESTART_BYTES,
    ) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.blobs = BlobStore(blob_dir or path.with_name(path.stem + ".blobs"))
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None
        self._checkpointer = Checkpointer(path, restart_bytes=wal_restart_bytes)
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
                rollback(conn)
                raise translate(exc, doing) from exc
            except BaseException:
                rollback(conn)
                raise
            return result

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        # SQLite starts the WAL over only when a write begins with every frame copied
        # into the database, which under steady writes never happens: the checkpointer
        # copies, the writer appends meanwhile. So when a checkpoint has caught up
        # with all but the last commits of a WAL half its bound (Checkpointer.caught_up:
        # this costs two fsyncs), the writer copies those few itself (a PASSIVE
        # checkpoint between its transactions: nothing is appended meanwhile), and the
        # next commit starts the WAL over, overwriting it in place rather than growing
        # it (issue 17: at 1000 commits/s the WAL grew by 24 MB/s and its truncation
        # stalled the writer 35 ms every few seconds). Past a limit regardless (a reader
        # kept on old frames), the writer truncates it.
        if self._checkpointer.caught_up():
            self._checkpoint_now(conn, "PASSIVE")
            return
        try:
            if os.stat(self._wal).st_size <= self._wal_limit:
                return
        except OSError:
            return
        self._checkpoint_now(conn, "TRUNCATE")

    def _checkpoint_now(self, conn: sqlite3.Connection, mode: str) -> None:
        # The batch is committed whatever happens here: never let it fail, nor wait
        # (a reader still on old frames, or the checkpointer at work: the next commit
        # tries again).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute(f"PRAGMA wal_checkpoint({mode})")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    async def _read(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return fn(self._reader_conn())
            except sqlite3.Error as exc:
                raise translate(exc, doing) from exc

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
                for statement in statements(step.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(step.version)}")
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise SchemaMismatch(f"{self.path} is not a usable playproof database: {exc}") from None

    async def schema_version(self) -> int:
        """The version of the schema in the file."""
        return await self._read("read the schema version", user_version)

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
        return await self._write(
            "commit impressions", lambda c: rows.commit(c, writes, self.max_open_gaps)
        )

    # --- devices ------------------------------------------------------------

    async def add_device(self, device: DeviceInfo, token_hash: str) -> None:
        """Register a device; Conflict if its id is taken."""

        def add(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO devices (device_id, store_id, token_hash, created_at, "
                    "revoked_at) VALUES (?, ?, ?, ?, ?)",
                    (*device[:2], token_hash, *device[2:4]),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"device {device.device_id!r} is already registered") from None

        await self._write("register a device", add)

    async def device_for_token(self, token_hash: str) -> Credential | None:
        """The device holding this token hash, with the stored hash."""
        return await self._read("look up a token", lambda c: sqlite_keys.credential(c, token_hash))

    async def device_version(self) -> int:
        """The device table's version (moved by triggers on devices and device_keys)."""
        sql = "SELECT version FROM device_changes"
        row = await self._read("read the device version", lambda c: c.execute(sql).fetchone())
        return int(row[0])

    async def get_device(self, device_id: str) -> DeviceInfo | None:
        """One registered device."""
        return await self._read("look up a device", lambda c: sqlite_keys.device(c, device_id))

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
        await self._write("save a status", lambda c: rows.save_status(c, status, received_at))

    async def latest_status(self, device_id: str) -> StatusInfo | None:
        """The device's latest status and accumulated evictions."""
        return await self._read("read a status", lambda c: rows.latest_status(c, device_id))

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
        return await self._read("read sequence state", lambda c: rows.journals(c, device_id))

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
        return await self._read("read rejects", lambda c: rows.rejects(c, device_id, reason, limit))

    async def held_records(self, device_ids: Sequence[str]) -> HeldRecords:
        """Every impression of these devices and every reject they submitted, one snapshot."""
        return await self._read("read held records", lambda c: rows.held(c, device_ids))

    async def mark_replayed(self, outcomes: Sequence[tuple[int, str]], now: int) -> None:
        """Note on reject rows that they were judged again, and what they became."""
        rows = [(now, result, reject_id) for reject_id, result in outcomes]
        sql = "UPDATE rejects SET replayed_at = ?, replay_result = ? WHERE id = ?"
        await self._write("mark rejects replayed", lambda c: c.executemany(sql, rows))

    # --- the catalog and verification ---------------------------------------

    async def load_catalog(self) -> CatalogState:
        """The catalog's active entries, retired campaigns, and the last change's id."""
        return await self._read("read the catalog", snapshot(verdicts.load_catalog))

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
        load = snapshot(lambda c: verdicts.load_screen(c, device_id, watermark, limit))
        return await self._read("read a screen's plays", load)

    async def save_decisions(
        self, decisions: Sequence[tuple[Play, Decision]], now: int, catalog_version: int
    ) -> list[str] | None:
        """Write decisions of plays still pending: the statuses written (Store's docstring)."""
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
            raise translate(exc, "read rows") from exc
        try:
            while rows := await loop.run_in_executor(self._readers, fetch, cur):
                yield rows
        except sqlite3.Error as exc:
            raise translate(exc, "read rows") from exc
        finally:
            await loop.run_in_executor(self._readers, cur.connection.close)

    # --- billing statements (stores/sqlite_billing.py) -------------------------

    def statement_snapshot(self) -> AbstractAsyncContextManager[Reader]:
        """Reads that all see one snapshot of the file."""
        return sqlite_billing.snapshot(self.path, self._readers)

    async def save_statement(self, final: FinalStatement, rebased: Sequence[Rebase]) -> str:
        """Keep a final statement and move the billed lines it adjusts; the stored document."""
        return await self._write(
            "keep a final statement", lambda c: sqlite_billing.save(c, final, rebased)
        )

    # --- buyer exports --------------------------------------------------------

    async def create_export(self, request: ExportRequest) -> ExportInfo:
        """Take, decide and record the buyer's unsettled verified plays (one write transaction)."""
        return await self._write(
            "create an export", lambda c: sqlite_exports.create_export(c, request)
        )

    # --- device keys (stores/sqlite_keys.py) ------------------------------------

    async def register_key(
        self,
        device_id: str,
        key_id: str,
        public_key: str,
        at: int,
        actor: str,
        by_operator: bool,
        max_keys: int = 4,
    ) -> Literal["created", "same"]:
        """Register a device's key, log it and require its signatures, in one transaction."""
        args = (device_id, key_id, public_key, at, actor, by_operator, max_keys)
        return await self._write("register a key", lambda c: sqlite_keys.register(c, *args))

    async def revoke_key(self, device_id: str, key_id: str, at: int, actor: str) -> bool:
        """Revoke a device's key from `at` on, and log it; False if revoked already."""
        args = (device_id, key_id, at, actor)
        return await self._write("revoke a key", lambda c: sqlite_keys.revoke(c, *args))

    async def set_self_enrol(self, device_id: str, open_: bool, at: int, actor: str) -> bool:
        """Open or close a device's self-enrolment, and log it; False if it already was."""
        args = (device_id, open_, at, actor)
        return await self._write(
            "change self-enrolment", lambda c: sqlite_keys.set_self_enrol(c, *args)
        )

    async def require_signatures(self, device_id: str, at: int, actor: str) -> bool:
        """Refuse the device's version-1 records from now on, and log it."""
        args = (device_id, at, actor)
        return await self._write("require signatures", lambda c: sqlite_keys.require(c, *args))

    async def list_keys(self, device_id: str) -> list[DeviceKey]:
        """Every key a device holds or held, oldest first."""
        return await self._read(
            "list a device's keys", snapshot(lambda c: sqlite_keys.list_keys(c, device_id))
        )

    async def key_log(self, after: int = 0, limit: int = 100_000) -> list[KeyEntry]:
        """The key log's entries numbered above `after`, at most `limit`."""
        return await self._read("read the key log", lambda c: sqlite_keys.log_page(c, after, limit))

    async def key_log_entry(self, entry: int) -> KeyEntry | None:
        """One entry of the key log."""
        return await self._read("read the key log", lambda c: sqlite_keys.log_entry(c, entry))
