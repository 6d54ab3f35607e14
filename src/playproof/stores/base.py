"""The one store interface, and the commit plan every store shares.

A store commits groups of batches in one transaction. What each record becomes
(accepted, duplicate, rejected and why) is decided here, by `plan_commit`, from
the rules' verdicts and what the store already holds, so that every store
answers exactly alike; the stores only read and write.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from msgspec import UNSET
from msgspec.structs import astuple

from playproof.catalog import Catalog, Change
from playproof.keylog import KeyEntry, active_between
from playproof.protocol import Ack, InvalidRecord, Record, Status, record_json
from playproof.rules import (
    Gap,
    SequenceChange,
    SequenceState,
    Verdict,
    advance,
    dedupe_first,
    key_trusted,
)
from playproof.stores.blobs import BlobStore
from playproof.stores.export_ledger import ExportInfo, ExportRequest
from playproof.stores.statements import FinalStatement, Rebase
from playproof.stores.verdicts import CatalogState, Facts, ScreenLoad
from playproof.verification import Decision, Play

Key = tuple[str, str, int]
JournalKey = tuple[str, str]

# The record's fields in declaration order (code-point order, `v` last and not
# stored), then what the service adds; rows are built with one `astuple`.
RECORD_COLUMNS: tuple[str, ...] = tuple(f for f in Record.__struct_fields__ if f != "v")
IMPRESSION_COLUMNS: tuple[str, ...] = (
    *RECORD_COLUMNS,
    "status",
    "quality",
    "flags",
    "verification",
    "received_at",
    "skew_ms",
)
assert Record.__struct_fields__[-1] == "v", "rows are built from astuple(record)[:-1]"
# The columns of version 2 (NULL in a version-1 row): a row is signed when key_id is set.

REJECT_COLUMNS: tuple[str, ...] = (
    "submitted_by",
    "device_id",
    "journal_id",
    "seq",
    "checksum",
    "reason",
    "detail",
    "raw",
    "sent_at",
    "received_at",
    "skew_ms",
)


class DeviceKey(NamedTuple):
    """A public key a device holds or held (protocol version 2); times on the service's clock."""

    device_id: str
    key_id: str
    public_key: str  # 64 lowercase hex digits
    registered_at: int
    registered_by: str  # "device", or the operator's name
    revoked_at: int | None = None
    revoked_by: str | None = None

    def active_at(self, at_ms: int) -> bool:
        """Whether a record received at `at_ms` may be signed with this key (the service
        and a buyer's `verify-evidence` apply one rule)."""
        return active_between(self.registered_at, self.revoked_at, at_ms)


class DeviceInfo(NamedTuple):
    """A registered device, with its keys (version 2) as the service knows them."""

    device_id: str
    store_id: str
    created_at: int
    revoked_at: int | None
    keys: tuple[DeviceKey, ...] = ()
    # Whether the device may register keys itself (PUT /v1/devices/keys/<key_id>).
    self_enrol: bool = True
    # Whether its version-1 records are refused `bad_signature`: set by its first key,
    # or by an operator before it has one.
    signatures_required: bool = False


class Credential(NamedTuple):
    """A device with the token hash stored for it."""

    device: DeviceInfo
    token_hash: str


class OperatorInfo(NamedTuple):
    """A registered operator: a person or system that reads reports."""

    name: str
    created_at: int
    revoked_at: int | None


class OperatorCredential(NamedTuple):
    """An operator with the token hash stored for it."""

    operator: OperatorInfo
    token_hash: str


class Judged(NamedTuple):
    """One item of a batch with the rules' verdict on it."""

    item: Record | InvalidRecord
    verdict: Verdict


class BatchWrite(NamedTuple):
    """One batch, judged, ready to commit for the authenticated device."""

    device_id: str
    sent_at: int
    received_at: int
    judged: list[Judged]
    # Its plan, drafted where it was judged (stores.draft); None to plan at commit.
    draft: Any = None

    @property
    def skew_ms(self) -> int:
        """`sent_at - received_at`."""
        return self.sent_at - self.received_at


class JournalInfo(NamedTuple):
    """Sequence state of one (device, journal)."""

    device_id: str
    journal_id: str
    high_water: int
    first_seen: int
    last_seen: int
    gaps: tuple[Gap, ...]
    # The cap on open gaps merged some (Policy.max_open_gaps): the gaps may hold
    # sequences that did arrive.
    suspect: bool = False


class RejectInfo(NamedTuple):
    """A rejected record, kept for audit."""

    id: int
    submitted_by: str
    device_id: str | None
    journal_id: str | None
    seq: int | None
    checksum: str | None
    reason: str
    detail: str
    raw: str
    sent_at: int
    received_at: int
    times: int


class HeldRecords(NamedTuple):
    """What the service holds of some devices' records, read from one snapshot.

    `impressions`: (device_id, journal_id, seq, checksum, status, start_ts, content_id);
    `rejects`: (device_id, journal_id, seq, checksum, reason) of what they submitted.
    """

    impressions: list[tuple[Any, ...]]
    rejects: list[tuple[Any, ...]]


class StatusInfo(NamedTuple):
    """A device's latest status, with what the service has accumulated from all of them."""

    device_id: str
    received_at: int
    status: Status
    evicted_total: int
    evicted_ranges: tuple[tuple[str, int, int], ...]


def status_info(
    device_id: str, received_at: int, status: Status, ranges: Sequence[Sequence[Any]]
) -> StatusInfo:
    """A device's latest status with its evicted ranges (journal, first, last).

    The total counts the distinct evicted sequences, not the `evicted` numbers
    of the statuses: a status resent after a lost answer must not count twice.
    """
    kept = tuple((str(j), int(f), int(last)) for j, f, last in ranges)
    total = sum(last - first + 1 for _, first, last in kept)
    return StatusInfo(device_id, received_at, status, total, kept)


class Store(Protocol):
    """What the ingest service needs of a store; SQLite and PostgreSQL implement it."""

    url: str
    # `sqlite` or `postgres`: the SQL dialect of `read_rows` and `stream_rows`.
    dialect: str
    blobs: BlobStore
    # How many group commits may run at once: 1 for SQLite's single writer.
    commit_lanes: int
    # Policy.max_open_gaps, which the service sets: the most open gaps of one journal.
    max_open_gaps: int

    async def open(self) -> None:
        """Connect, and bring the schema up to date."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        """Commit batches in one durable transaction; return each batch's acks."""

    async def add_device(self, device: DeviceInfo, token_hash: str) -> None:
        """Register a device; Conflict if it exists."""

    async def device_for_token(self, token_hash: str) -> Credential | None:
        """The device holding this token hash, revoked or not, with the stored hash."""

    async def device_version(self) -> int:
        """A number that moves whenever a device or a device key is added or changed,
        by anyone (triggers move it): what cached credentials are checked against."""

    async def get_device(self, device_id: str) -> DeviceInfo | None:
        """One registered device."""

    async def list_devices(self) -> list[DeviceInfo]:
        """Every registered device, by id."""

    async def revoke_device(self, device_id: str, now: int) -> None:
        """Revoke a device's token; NotFound if there is no such device."""

    async def rotate_device(self, device_id: str, token_hash: str) -> None:
        """Give a device a new token (the old one stops working, a revocation is lifted)."""

    async def save_status(self, status: Status, received_at: int) -> None:
        """Keep a device's latest status and accumulate its evictions."""

    async def latest_status(self, device_id: str) -> StatusInfo | None:
        """A device's latest status."""

    async def add_screenshot(
        self, sha256: str, content_type: str, size: int, device_id: str, now: int
    ) -> bool:
        """Record a stored screenshot blob; False when it was known already."""

    async def journals(self, device_id: str | None = None) -> list[JournalInfo]:
        """Sequence state per (device, journal)."""

    async def gap_count(self) -> int:
        """Open sequence gaps over every journal."""

    async def rejects(
        self, device_id: str | None = None, reason: str | None = None, limit: int = 100
    ) -> list[RejectInfo]:
        """Rejected records, newest first."""

    async def held_records(self, device_ids: Sequence[str]) -> HeldRecords:
        """Every impression of these devices and every reject they submitted (reconciliation).

        A reject replayed into an impression (`mark_replayed`) is no longer among them.
        """

    async def mark_replayed(self, outcomes: Sequence[tuple[int, str]], now: int) -> None:
        """Note on reject rows (by id) that they were judged again, and what they became."""

    async def add_operator(self, operator: OperatorInfo, token_hash: str) -> None:
        """Register an operator; Conflict if the name (or token) is taken."""

    async def operator_for_token(self, token_hash: str) -> OperatorCredential | None:
        """The operator holding this token hash, revoked or not, with the stored hash."""

    async def list_operators(self) -> list[OperatorInfo]:
        """Every registered operator, by name."""

    async def revoke_operator(self, name: str, now: int) -> None:
        """Revoke an operator's token; NotFound if there is no such operator."""

    # --- the catalog and verification (stores/verdicts.py) ---

    async def load_catalog(self) -> CatalogState:
        """The catalog's active entries, retired campaigns, and the id of the last change."""

    async def update_catalog(
        self, update: Callable[[Catalog], tuple[Catalog, list[Change]]], now: int
    ) -> list[Change]:
        """In one transaction: apply `update` to the catalog, keep every change with its
        time, and send the decided plays the changes touch back to pending."""

    async def add_reference(self, content_id: str, sha256: str, phash: str, now: int) -> bool:
        """Keep a reference image's hash for a content; False when it was known."""

    async def save_screenshot_facts(self, facts: Sequence[Facts]) -> None:
        """Keep what screenshots show (sha256, phash or None, blank, error)."""

    async def load_screen(self, device_id: str, watermark: int, limit: int) -> ScreenLoad:
        """A screen's pending plays received up to `watermark`, in stored order, and around."""

    async def save_decisions(
        self, decisions: Sequence[tuple[Play, Decision]], now: int, catalog_version: int
    ) -> list[str] | None:
        """Write decisions of plays still pending (of one screen or several), with log and
        rollup, in one transaction; the statuses of those written, in order (a play another
        verifier decided meanwhile is left out), or None (nothing written) if the catalog
        changed since or (PostgreSQL) another verifier holds one of their screens."""

    async def read_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query in the store's dialect (`stores/queries.py` builds them)."""

    def stream_rows(
        self, sql: str, params: Sequence[Any] = (), chunk: int = 5000
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """Rows of one read-only query, from one snapshot, `chunk` at a time, never all at once."""

    # --- billing statements (stores/statements.py, sqlite_billing.py, postgres_billing.py) ---

    def statement_snapshot(self) -> AbstractAsyncContextManager[Reader]:
        """Reads that all see one snapshot, in which no decision or catalog change is half done
        (what a statement counts, prices and marks must agree to the play)."""

    async def save_statement(self, final: FinalStatement, rebased: Sequence[Rebase]) -> str:
        """In one transaction: keep a final statement (the document stored first for its key
        wins and is returned) and move the billed lines of the statements it adjusts;
        Conflict, with nothing written, if any of those moved since they were read."""

    # --- buyer exports (stores/export_ledger.py, sqlite_exports.py, postgres_exports.py) ---

    async def create_export(self, request: ExportRequest) -> ExportInfo:
        """In one transaction, under the buyer's lock: take the buyer's verified plays not yet
        settled (in the request's range), decide each (contained or listed apart), record all."""

    # --- device keys (stores/keys*.py) ---
    # Every write below appends its key-log entry in the same transaction, under the one
    # lock of key writes (the log never forks); NotFound for an unknown device.

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
        """Register a checked public key (signing.check_public_key) for a device, and require
        its signatures from now on; "same" when it holds that key already (nothing logged).
        Forbidden when the device registers itself and self-enrolment is closed; Conflict
        past `max_keys` active keys, for a key id held by another device, or a revoked key."""

    async def revoke_key(self, device_id: str, key_id: str, at: int, actor: str) -> bool:
        """Revoke a device's key from `at` on (service clock); False if it was revoked already."""

    async def set_self_enrol(self, device_id: str, open_: bool, at: int, actor: str) -> bool:
        """Open or close a device's self-enrolment; False when it already was so."""

    async def require_signatures(self, device_id: str, at: int, actor: str) -> bool:
        """Refuse the device's version-1 records from now on; False when they already were."""

    async def list_keys(self, device_id: str) -> list[DeviceKey]:
        """Every key a device holds or held, revoked ones included, oldest first."""

    async def key_log(self, after: int = 0, limit: int = 100_000) -> list[KeyEntry]:
        """The key log's entries numbered above `after`, in order, at most `limit`."""

    async def key_log_entry(self, entry: int) -> KeyEntry | None:
        """One entry of the key log."""


@dataclass
class CommitPlan:
    """The rows to write and the acks to give for a group of batches."""

    acks: list[list[Ack]] = field(default_factory=list)
    impressions: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[tuple[Any, ...]] = field(default_factory=list)
    arrivals: dict[JournalKey, list[tuple[int, int]]] = field(default_factory=dict)


def _tracked(verdict: Verdict) -> bool:
    return dedupe_first(verdict.reason)


def tracked_keys(writes: Sequence[BatchWrite]) -> dict[JournalKey, list[int]]:
    """Per journal, the sequences whose stored checksum the plan needs to know."""
    keys: dict[JournalKey, list[int]] = {}
    for write in writes:
        for item, verdict in write.judged:
            if isinstance(item, Record) and _tracked(verdict):
                keys.setdefault((item.device_id, item.journal_id), []).append(item.seq)
    return keys


def _row_suffix(verdict: Verdict, write: BatchWrite) -> tuple[Any, ...]:
    verification = "pending" if verdict.status == "valid" else None
    flags = ",".join(verdict.flags)
    return (verdict.status, verdict.quality, flags, verification, write.received_at, write.skew_ms)


def record_values(record: Record) -> tuple[Any, ...]:
    """The record's values in RECORD_COLUMNS order; version 2's fields NULL in version 1."""
    values = astuple(record)[:-1]
    if record.v == 1:
        return tuple(None if value is UNSET else value for value in values)
    return values


def impression_row(record: Record, verdict: Verdict, write: BatchWrite) -> tuple[Any, ...]:
    """A record and its verdict as a row in IMPRESSION_COLUMNS order."""
    return record_values(record) + _row_suffix(verdict, write)


def reject_row(
    write: BatchWrite, item: Record | InvalidRecord, reason: str, detail: str
) -> tuple[Any, ...]:
    """A rejected item as a row in REJECT_COLUMNS order."""
    if isinstance(item, InvalidRecord):
        key: tuple[Any, ...] = (None, None, item.seq, None)
        raw = item.raw.decode("utf-8", "replace")
    else:
        key = (item.device_id, item.journal_id, item.seq, item.checksum)
        raw = record_json(item).decode()
    return (
        write.device_id,
        *key,
        reason,
        detail,
        raw,
        write.sent_at,
        write.received_at,
        write.skew_ms,
    )


class _Planner:
    """Plans one batch; what the batch's records share is worked out once."""

    def __init__(self, plan: CommitPlan, write: BatchWrite, seen: dict[Key, str]) -> None:
        self.plan = plan
        self.write = write
        self.seen = seen
        self.skew = write.skew_ms
        self.suffixes: dict[Verdict, tuple[Any, ...]] = {}

    def invalid(self, item: InvalidRecord) -> Ack:
        """Plan the audit row of an item that did not decode; its ack."""
        self.plan.rejects.append(reject_row(self.write, item, "invalid", item.error))
        return Ack(item.seq, "rejected", reason="invalid")

    def record(self, record: Record, verdict: Verdict) -> Ack:
        """Plan a judged record's rows (impression or reject, sequence arrival); its ack."""
        if key_trusted(verdict.reason):
            arrival = (record.seq, record.end_ts - self.skew)
            journal = (record.device_id, record.journal_id)
            self.plan.arrivals.setdefault(journal, []).append(arrival)
            stored = self.seen.get((*journal, record.seq))
            if stored is not None:
                return self._known(record, stored)
        elif dedupe_first(verdict.reason):
            # A bad signature: a duplicate still, but it never holds a place nor conflicts.
            key = (record.device_id, record.journal_id, record.seq)
            if self.seen.get(key) == record.checksum:
                return Ack(record.seq, "duplicate")
        if verdict.reason is not None:
            self.plan.rejects.append(reject_row(self.write, record, verdict.reason, verdict.detail))
            return Ack(record.seq, "rejected", reason=verdict.reason)  # type: ignore[arg-type]
        return self._accept(record, verdict)

    def _known(self, record: Record, stored: str) -> Ack:
        if stored == record.checksum:
            return Ack(record.seq, "duplicate")
        detail = f"sequence already stored with checksum {stored}"
        self.plan.rejects.append(reject_row(self.write, record, "conflict", detail))
        return Ack(record.seq, "rejected", reason="conflict")

    def _accept(self, record: Record, verdict: Verdict) -> Ack:
        self.seen[(record.device_id, record.journal_id, record.seq)] = str(record.checksum)
        suffix = self.suffixes.get(verdict)
        if suffix is None:
            suffix = self.suffixes[verdict] = _row_suffix(verdict, self.write)
        self.plan.impressions.append(record_values(record) + suffix)
        return Ack(record.seq, "accepted", verdict.status, verdict.quality, list(verdict.flags))  # type: ignore[arg-type]


def plan_commit(writes: Sequence[BatchWrite], existing: Mapping[Key, str]) -> CommitPlan:
    """Decide every record's ack from its verdict and the checksums already stored.

    Dedupe comes before the rules' rejections: a record already stored is a
    duplicate even if, resent late, it would now be stale.
    """
    plan = CommitPlan()
    seen = dict(existing)
    for write in writes:
        planner = _Planner(plan, write, seen)
        plan.acks.append(
            [
                planner.invalid(item)
                if isinstance(item, InvalidRecord)
                else planner.record(item, verdict)
                for item, verdict in write.judged
            ]
        )
    return plan


def empty_state() -> SequenceState:
    """The sequence state of a journal never seen before."""
    return SequenceState(0, 0, ())


def sequence_changes(
    arrivals: Mapping[JournalKey, list[tuple[int, int]]],
    states: Mapping[JournalKey, SequenceState],
    max_open_gaps: int | None = None,
) -> dict[JournalKey, SequenceChange]:
    """Per journal, how the arrivals of a commit move its sequence state."""
    return {
        key: advance(states.get(key, empty_state()), seqs, max_open_gaps)
        for key, seqs in arrivals.items()
    }


class GapWindow(NamedTuple):
    """The gaps of a journal a commit must load: never all of them.

    Those overlapping `low..high` (the span of the arrivals at or below the
    high-water mark; None when there are none), and the journal's last gap
    when an arrival may open a new one (the cap merges into it).
    """

    low: int | None
    high: int | None
    last: bool


def gap_window(seqs: Sequence[int], state: SequenceState) -> GapWindow:
    """Which of a journal's gaps the arrivals `seqs` may fill or extend."""
    below = [s for s in seqs if s <= state.high_water]
    opens = any(s > state.high_water + 1 for s in seqs)
    if not below:
        return GapWindow(None, None, opens)
    return GapWindow(min(below), max(below), opens)


def needs_lookup(seqs: Sequence[int], state: SequenceState | None) -> list[int]:
    """The sequences that may already be stored: none above the high-water mark can be."""
    if state is None:
        return []
    return [s for s in seqs if s <= state.high_water]


class Reader(Protocol):
    """What a report reads through: a store, or one snapshot of it (`statement_snapshot`)."""

    # `sqlite` or `postgres`: the SQL dialect of `read_rows`.
    dialect: str

    async def read_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query in the reader's dialect."""
