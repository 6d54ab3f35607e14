"""The production store: PostgreSQL through a psycopg 3 async connection pool.

`playproof serve --db postgresql://user@host:port/db` is all it takes: the
store migrates the schema at start (in the connection's current schema, so a
`search_path` in the URL's `options` picks it), keeps day partitions of the
impressions table ready ahead of time, and commits each group of batches in
one transaction (see `postgres_commit`). Several commit lanes and several
service nodes may write at once. psycopg's errors are translated here, at the
boundary: an unreachable database is `StoreUnavailable` (HTTP 503, nothing
acknowledged), and the pool reconnects by itself once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from playproof.catalog import Catalog, Change
from playproof.errors import (
    ConfigError,
    Conflict,
    NotFound,
    SchemaMismatch,
    StoreDataError,
    StoreError,
    StoreUnavailable,
)
from playproof.keylog import KeyEntry
from playproof.protocol import Ack, Status, decode_status, encode
from playproof.rules import DEFAULT_POLICY, Gap
from playproof.stores import (
    migrations,
    postgres_billing,
    postgres_commit,
    postgres_exports,
    postgres_keys,
)
from playproof.stores import postgres_sql as q
from playproof.stores import postgres_verdicts as verdicts
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
    status_info,
)
from playproof.stores.blobs import BlobStore
from playproof.stores.export_ledger import ExportInfo, ExportRequest
from playproof.stores.postgres_partitions import Partitions, ahead
from playproof.stores.statements import FinalStatement, Rebase
from playproof.stores.verdicts import CatalogState, Facts, ScreenLoad
from playproof.verification import Decision, Play

log = logging.getLogger(__name__)

Conn = AsyncConnection[TupleRow]

DEFAULT_BLOB_DIR: Final = "playproof.blobs"
COMMIT_LANES: Final = 3
POOL_MIN: Final = 2
POOL_MAX: Final = 10
WAIT_S: Final = 5.0  # for a connection; then the request is answered 503
PING_WAIT_S: Final = 2.0
RECONNECT_S: Final = 10.0  # a slot's reconnect attempts; later requests start new ones
MAINTAIN_EVERY_S: Final = 600.0
RETRIES: Final = 3
# Dead peers are noticed within seconds rather than when the kernel gives up.
CONNECT_KWARGS: Final[dict[str, Any]] = {
    "autocommit": True,
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
    "application_name": "playproof",
}

_SCHEMA_VERSION = (
    "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('playproof:migrate:' || current_schema()))"


def translate(exc: psycopg.Error, doing: str) -> StoreError:
    """A psycopg error as ours.

    SQLSTATE classes 22 (data exception) and 23 (integrity constraint) are the
    data's fault: StoreDataError. A serialization failure or deadlock that
    (class 40) outlived the retries is no outage, so that the committer isolates the
    batch behind it; anything else unreachable or transient is StoreUnavailable.
    """
    state = exc.sqlstate or ""
    if state[:2] in ("22", "23"):
        return StoreDataError(f"PostgreSQL refused the data to {doing}: {exc}".strip())
    if state[:2] == "40":
        return StoreError(f"PostgreSQL could not serialize a transaction to {doing}: {exc}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"PostgreSQL cannot {doing} now: {exc}".strip())
    return StoreError(f"PostgreSQL failed to {doing}: {exc}".strip())


def _worth_retrying(exc: psycopg.Error) -> bool:
    # By SQLSTATE class 40 (transaction rollback): psycopg's DeadlockDetected and
    # SerializationFailure are not subclasses of its TransactionRollback.
    return (exc.sqlstate or "").startswith("40") or isinstance(exc, psycopg.errors.UniqueViolation)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable URL>"
    who = info.get("user", "")
    port = f":{info['port']}" if info.get("port") else ""
    where = f"{info.get('host', '')}{port}/{info.get('dbname', '')}"
    return f"postgresql://{who}{'@' if who else ''}{where}"


def default_blob_dir() -> Path:
    """`PLAYPROOF_BLOB_DIR`, or `./playproof.blobs`."""
    return Path(os.environ.get("PLAYPROOF_BLOB_DIR") or DEFAULT_BLOB_DIR)


def wall_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class PostgresStore:
    """The store interface on PostgreSQL, screenshots in a blob folder."""

    commit_lanes: int = COMMIT_LANES
    dialect = "postgres"
    max_open_gaps = DEFAULT_POLICY.max_open_gaps

    def __init__(self, url: str, blob_dir: Path | None = None, pool_max: int = POOL_MAX) -> None:
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(
                f"expected a postgresql://... URL that libpq accepts: {exc}"
            ) from None
        self.url = url
        # What the URL says wins over our defaults (application_name, timeouts...).
        self._kwargs = {k: v for k, v in CONNECT_KWARGS.items() if k not in given}
        self.blobs = BlobStore(blob_dir or default_blob_dir())
        self._pool_max = pool_max
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._partitions = Partitions(self._connection)
        self._maintainer: asyncio.Task[None] | None = None

    # --- plumbing -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str, wait_s: float = WAIT_S) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StoreUnavailable(f"cannot {doing}: the PostgreSQL store is not open")
        try:
            async with self._pool.connection(wait_s) as conn:
                yield conn
        except psycopg.Error as exc:
            raise translate(exc, doing) from exc

    async def _fetch(
        self, doing: str, query: Any, params: Any = None, wait_s: float = WAIT_S
    ) -> list[TupleRow]:
        async with self._connection(doing, wait_s) as conn:
            return await (await conn.execute(query, params)).fetchall()

    # --- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Connect, bring the schema up to date and get the day partitions ready."""
        await self._migrate()
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=min(POOL_MIN, self._pool_max),
            max_size=self._pool_max,
            kwargs=self._kwargs,
            check=AsyncConnectionPool.check_connection,
            timeout=WAIT_S,
            reconnect_timeout=RECONNECT_S,
            name="playproof",
            open=False,
        )
        try:
            await self._pool.open(wait=True, timeout=WAIT_S * 2)
            await self._partitions.load()
            await self._partitions.ensure(ahead(wall_ms()))
        except psycopg.Error as exc:
            await self.close()
            raise translate(exc, f"open a pool to {redact(self.url)}") from None
        except BaseException:
            await self.close()
            raise
        self._maintainer = asyncio.create_task(self._maintain())

    async def _migrate(self) -> None:
        # A connection of its own, not the pool's: an unreachable database or a
        # refused login is reported at once, with libpq's own words.
        try:
            async with await AsyncConnection.connect(self.url, **self._kwargs) as conn:
                await migrate(conn)
        except psycopg.Error as exc:
            raise translate(exc, f"connect to {redact(self.url)} and migrate it") from None

    async def schema_version(self) -> int:
        """The version of the schema in the database."""
        async with self._connection("read the schema version") as conn:
            return await _version(conn)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTAIN_EVERY_S)
            try:
                await self._partitions.ensure(ahead(wall_ms()))
            except StoreError as exc:
                log.warning("cannot create the partitions ahead now (will retry): %s", exc)

    async def close(self) -> None:
        """Stop the partition task and close every connection."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        """Raise StoreUnavailable unless PostgreSQL answers now."""
        await self._fetch("answer a ping", "SELECT 1", wait_s=PING_WAIT_S)

    # --- ingest -------------------------------------------------------------

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        """Commit every batch in one transaction and return their acks."""
        if not writes:
            return []
        now = max(w.received_at for w in writes)
        missing = self._partitions.missing(postgres_commit.start_times(writes), now)
        if missing:
            await self._partitions.ensure(missing)
        try:
            async with self._connection("commit impressions") as conn:
                for attempt in itertools.count(1):
                    try:
                        return await postgres_commit.commit(conn, writes, self.max_open_gaps)
                    except psycopg.Error as exc:
                        # Rolled back (a deadlock, or a key stored by a writer that did not
                        # hold its journal's lock): redo it all; the lookup now sees that key.
                        if not _worth_retrying(exc) or attempt >= RETRIES:
                            raise
        except ValueError as exc:  # a row psycopg cannot build (OverflowError among them)
            raise StoreDataError(
                f"PostgreSQL refused the data to commit impressions: {exc}"
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- devices ------------------------------------------------------------

    async def add_device(self, device: DeviceInfo, token_hash: str) -> None:
        """Register a device; Conflict if its id (or token) is taken."""
        params = (*device[:2], token_hash, *device[2:4])
        async with self._connection("register a device") as conn:
            try:
                await conn.execute(q.INSERT_DEVICE, params)
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"device {device.device_id!r} is already registered") from None

    async def device_for_token(self, token_hash: str) -> Credential | None:
        """The device holding this token hash, with the stored hash."""
        async with self._connection("look up a token") as conn:
            return await postgres_keys.credential(conn, token_hash)

    async def device_version(self) -> int:
        """The device table's version (moved by triggers on devices and device_keys)."""
        rows = await self._fetch("read the device version", "SELECT version FROM device_changes")
        return int(rows[0][0])

    async def get_device(self, device_id: str) -> DeviceInfo | None:
        """One registered device."""
        async with self._connection("look up a device") as conn:
            return await postgres_keys.device(conn, device_id)

    async def list_devices(self) -> list[DeviceInfo]:
        """Every registered device."""
        rows = await self._fetch("list devices", q.SELECT_DEVICE + "ORDER BY device_id")
        return [DeviceInfo(*row) for row in rows]

    async def revoke_device(self, device_id: str, now: int) -> None:
        """Revoke a device's token; NotFound if unknown."""
        async with self._connection("revoke a device") as conn:
            cur = await conn.execute(q.REVOKE_DEVICE, (now, device_id))
            if cur.rowcount == 0:
                raise NotFound(f"no device {device_id!r} is registered")

    async def rotate_device(self, device_id: str, token_hash: str) -> None:
        """Give a device a new token hash (lifting a revocation); NotFound if unknown."""
        async with self._connection("rotate a token") as conn:
            cur = await conn.execute(q.ROTATE_DEVICE, (token_hash, device_id))
            if cur.rowcount == 0:
                raise NotFound(f"no device {device_id!r} is registered")

    # --- health -------------------------------------------------------------

    async def save_status(self, status: Status, received_at: int) -> None:
        """Keep the device's latest status; add its evictions to the running record."""
        firsts = [first for first, _ in status.evicted_ranges]
        lasts = [last for _, last in status.evicted_ranges]
        payload = encode(status).decode()
        async with self._connection("save a status") as conn, conn.transaction():
            await conn.execute(
                q.UPSERT_STATUS, (status.device_id, received_at, payload, status.evicted)
            )
            if firsts:
                journal = status.journal_id or ""
                params = (status.device_id, journal, received_at, firsts, lasts)
                await conn.execute(q.INSERT_EVICTIONS, params)

    async def latest_status(self, device_id: str) -> StatusInfo | None:
        """The device's latest status and accumulated evictions."""
        async with self._connection("read a status") as conn, conn.transaction():
            row = await (await conn.execute(q.SELECT_STATUS, (device_id,))).fetchone()
            ranges = await (await conn.execute(q.SELECT_EVICTIONS, (device_id,))).fetchall()
        if row is None:
            return None
        status = decode_status(row[1].encode())
        return status_info(device_id, row[0], status, ranges)

    async def add_screenshot(
        self, sha256: str, content_type: str, size: int, device_id: str, now: int
    ) -> bool:
        """Record a screenshot blob; False when it was known already."""
        params = (sha256, content_type, size, device_id, now)
        async with self._connection("record a screenshot") as conn:
            return (await conn.execute(q.INSERT_SCREENSHOT, params)).rowcount > 0

    async def journals(self, device_id: str | None = None) -> list[JournalInfo]:
        """Sequence state per (device, journal), with open gaps."""
        rows = await self._fetch("read sequence state", q.SELECT_JOURNALS, {"device": device_id})
        return [
            JournalInfo(device, journal, high, first, last, tuple(Gap(*g) for g in gaps), sus)
            for device, journal, high, first, last, sus, gaps in rows
        ]

    async def gap_count(self) -> int:
        """Open sequence gaps over every journal."""
        rows = await self._fetch("count gaps", "SELECT count(*) FROM gaps")
        return int(rows[0][0])

    async def rejects(
        self, device_id: str | None = None, reason: str | None = None, limit: int = 100
    ) -> list[RejectInfo]:
        """Rejected records, newest first."""
        params = {"device": device_id, "reason": reason, "limit": limit}
        rows = await self._fetch("read rejects", q.SELECT_REJECTS, params)
        return [RejectInfo(*row) for row in rows]

    async def held_records(self, device_ids: Sequence[str]) -> HeldRecords:
        """Every impression of these devices and every reject they submitted, one snapshot."""
        wanted = (list(device_ids),)
        async with self._connection("read held records") as conn, conn.transaction():
            await conn.execute(q.REPEATABLE_READ)
            impressions = await (await conn.execute(q.HELD_IMPRESSIONS, wanted)).fetchall()
            rejects = await (await conn.execute(q.HELD_REJECTS, wanted)).fetchall()
        return HeldRecords(impressions, rejects)

    async def mark_replayed(self, outcomes: Sequence[tuple[int, str]], now: int) -> None:
        """Note on reject rows that they were judged again, and what they became."""
        rows = [(now, result, reject_id) for reject_id, result in outcomes]
        async with self._connection("mark rejects replayed") as conn, conn.cursor() as cur:
            await cur.executemany(q.MARK_REPLAYED, rows)

    # --- the catalog and verification ---------------------------------------

    async def load_catalog(self) -> CatalogState:
        """The catalog's active entries, retired campaigns, and the last change's id."""
        async with self._connection("read the catalog") as conn:
            return await verdicts.load_catalog(conn)

    async def update_catalog(
        self, update: Callable[[Catalog], tuple[Catalog, list[Change]]], now: int
    ) -> list[Change]:
        """Apply `update` to the catalog, keep the changes, send affected plays back."""
        async with self._connection("update the catalog") as conn:
            return await verdicts.update_catalog(conn, update, now)

    async def add_reference(self, content_id: str, sha256: str, phash: str, now: int) -> bool:
        """Keep a reference image's hash for a content."""
        async with self._connection("add a reference image") as conn:
            return await verdicts.add_reference(conn, content_id, sha256, phash, now)

    async def save_screenshot_facts(self, facts: Sequence[Facts]) -> None:
        """Keep what screenshots show."""
        async with self._connection("keep screenshot facts") as conn:
            await verdicts.save_facts(conn, facts)

    async def load_screen(self, device_id: str, watermark: int, limit: int) -> ScreenLoad:
        """A screen's pending plays up to `watermark`, in stored order, and around."""
        async with self._connection("read a screen's plays") as conn:
            return await verdicts.load_screen(conn, device_id, watermark, limit)

    async def save_decisions(
        self, decisions: Sequence[tuple[Play, Decision]], now: int, catalog_version: int
    ) -> list[str] | None:
        """Write decisions of plays still pending: the statuses written (Store's docstring)."""
        async with self._connection("save decisions") as conn:
            return await verdicts.save_decisions(conn, decisions, now, catalog_version)

    async def execute_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query with `%s` placeholders (for reports and tests)."""
        return await self._fetch("run a query", sql.encode(), tuple(params))

    # --- operators and reports -----------------------------------------------

    async def add_operator(self, operator: OperatorInfo, token_hash: str) -> None:
        """Register an operator; Conflict if its name (or token) is taken."""
        params = (operator.name, token_hash, *operator[1:])
        async with self._connection("register an operator") as conn:
            try:
                await conn.execute(q.INSERT_OPERATOR, params)
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"operator {operator.name!r} is already registered") from None

    async def operator_for_token(self, token_hash: str) -> OperatorCredential | None:
        """The operator holding this token hash, with the stored hash."""
        rows = await self._fetch("look up a token", q.SELECT_OPERATOR_CREDENTIAL, (token_hash,))
        return OperatorCredential(OperatorInfo(*rows[0][:3]), rows[0][3]) if rows else None

    async def list_operators(self) -> list[OperatorInfo]:
        """Every registered operator."""
        rows = await self._fetch("list operators", q.SELECT_OPERATORS)
        return [OperatorInfo(*row) for row in rows]

    async def revoke_operator(self, name: str, now: int) -> None:
        """Revoke an operator's token; NotFound if unknown."""
        async with self._connection("revoke an operator") as conn:
            cur = await conn.execute(q.REVOKE_OPERATOR, (now, name))
            if cur.rowcount == 0:
                raise NotFound(f"no operator {name!r} is registered")

    async def read_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query with `%s` placeholders."""
        return await self._fetch("read rows", sql.encode(), tuple(params))

    async def stream_rows(
        self, sql: str, params: Sequence[Any] = (), chunk: int = 5000
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """Rows of one query, `chunk` at a time, through a server-side cursor (one snapshot)."""
        async with (
            self._connection("read rows") as conn,
            conn.transaction(),
            conn.cursor(name="playproof_rows", binary=True) as cur,
        ):
            cur.itersize = chunk
            await cur.execute(sql.encode(), tuple(params))
            while rows := await cur.fetchmany(chunk):
                yield rows

    # --- billing statements (stores/postgres_billing.py) ----------------------

    def statement_snapshot(self) -> AbstractAsyncContextManager[Reader]:
        """Reads in one transaction that holds decisions and catalog changes off."""
        return postgres_billing.snapshot(self._connection)

    async def save_statement(self, final: FinalStatement, rebased: Sequence[Rebase]) -> str:
        """Keep a final statement and move the billed lines it adjusts; the stored document."""
        async with self._connection("keep a final statement") as conn:
            return await postgres_billing.save(conn, final, rebased)

    # --- buyer exports --------------------------------------------------------

    async def create_export(self, request: ExportRequest) -> ExportInfo:
        """Take, decide and record the buyer's unsettled verified plays, under its lock."""
        async with self._connection("create an export") as conn:
            return await postgres_exports.create_export(conn, request)

    # --- device keys (stores/postgres_keys.py) -----------------------------------

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
        async with self._connection("register a key") as conn:
            return await postgres_keys.register(conn, *args)

    async def revoke_key(self, device_id: str, key_id: str, at: int, actor: str) -> bool:
        """Revoke a device's key from `at` on, and log it; False if revoked already."""
        async with self._connection("revoke a key") as conn:
            return await postgres_keys.revoke(conn, device_id, key_id, at, actor)

    async def set_self_enrol(self, device_id: str, open_: bool, at: int, actor: str) -> bool:
        """Open or close a device's self-enrolment, and log it; False if it already was."""
        async with self._connection("change self-enrolment") as conn:
            return await postgres_keys.set_self_enrol(conn, device_id, open_, at, actor)

    async def require_signatures(self, device_id: str, at: int, actor: str) -> bool:
        """Refuse the device's version-1 records from now on, and log it."""
        async with self._connection("require signatures") as conn:
            return await postgres_keys.require(conn, device_id, at, actor)

    async def list_keys(self, device_id: str) -> list[DeviceKey]:
        """Every key a device holds or held, oldest first."""
        async with self._connection("list a device's keys") as conn:
            return await postgres_keys.list_keys(conn, device_id)

    async def key_log(self, after: int = 0, limit: int = 100_000) -> list[KeyEntry]:
        """The key log's entries numbered above `after`, at most `limit`."""
        async with self._connection("read the key log") as conn:
            return await postgres_keys.log_page(conn, after, limit)

    async def key_log_entry(self, entry: int) -> KeyEntry | None:
        """One entry of the key log."""
        async with self._connection("read the key log") as conn:
            return await postgres_keys.log_entry(conn, entry)


async def migrate(conn: Conn) -> None:
    """Apply the pending migrations in one transaction; SchemaMismatch for a newer schema."""
    async with conn.transaction():
        await conn.execute(_MIGRATION_LOCK)
        row = await (await conn.execute("SELECT current_schema()")).fetchone()
        schema = row[0] if row else None
        if schema is None:
            raise SchemaMismatch(
                "expected the connection's search_path to name an existing schema, got "
                "none: create the schema first, or drop `search_path` from the URL"
            )
        await conn.execute(_SCHEMA_VERSION)
        for step in migrations.pending("postgres", await _version(conn)):
            log.info("migrating %s to schema version %d (%s)", schema, step.version, step.name)
            await conn.execute(step.sql.encode())
            await conn.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (step.version, step.name),
            )


async def _version(conn: Conn) -> int:
    row = await (
        await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    ).fetchone()
    return int(row[0]) if row else 0
