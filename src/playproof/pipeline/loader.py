"""The loading side: durable consumers batch records from the stream into the store.

Each partition stream has one durable pull consumer, `<name>_loader`, shared
by every loader process: whichever loader fetches first takes the next batch
(up to `batch` messages, and no more may be unacknowledged), rebuilds the
batches the ingest nodes judged, and commits them with the store's own
`commit`, which dedupes (`impression_keys`), tracks sequences and gaps,
keeps rejects and maintains the rollups exactly as on the store path. The
batch is acknowledged (message by message) only after the commit returned.

A loader killed mid-batch leaves it unacknowledged: after `ack_wait` the same
messages, in the same order, go to the next loader that fetches. What the
dead loader had committed is answered `duplicate` by the store's dedupe;
rejects, which the store counts (`times`), are checked against the rejects
table for a redelivered batch, so that they are not counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from playproof.errors import StoreError, StoreUnavailable
from playproof.pipeline.codec import REJECT, Entry, batches_of, decode_entry
from playproof.pipeline.jetstream import NATS_ERRORS, JetStream, translate
from playproof.pipeline.settings import Settings
from playproof.stores.base import Store

log = logging.getLogger(__name__)

FETCH_WAIT_S: Final = 1.0
BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
PROGRESS_EVERY_S: Final = 10.0

Subscription = JetStreamContext.PullSubscription

_APPLIED_INVALID = (
    "SELECT 1 FROM rejects WHERE submitted_by = %s AND received_at = %s AND reason = %s "
    "AND raw = %s AND device_id IS NULL LIMIT 1"
)
_APPLIED_KEYED = (
    "SELECT 1 FROM rejects WHERE device_id = %s AND journal_id = %s AND seq = %s "
    "AND checksum = %s AND reason = %s AND received_at = %s LIMIT 1"
)


@dataclass
class Progress:
    """What a loader has done, per partition and in all."""

    batches: int = 0
    records: int = 0
    redelivered: int = 0
    skipped_rejects: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)

    def loaded(self, partition: int, records: int) -> None:
        """Count one committed batch."""
        self.batches += 1
        self.records += records
        self.per_partition[partition] = self.per_partition.get(partition, 0) + records


class Loader:
    """Loads the partitions it was given from JetStream into a store until stopped."""

    def __init__(
        self, settings: Settings, store: Store, partitions: Sequence[int] | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.partitions = (
            list(range(settings.partitions)) if partitions is None else list(partitions)
        )
        self.progress = Progress()
        self._js: JetStream | None = None
        self._stopping = asyncio.Event()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect, then load every partition until `stop()`; the current batches finish first."""
        js = await JetStream.connect(self.settings, "loader")
        self._js = js
        try:
            await js.ensure_streams()
            subs = [await js.pull(p) for p in self.partitions]
            if ready is not None:
                ready()
            async with asyncio.TaskGroup() as group:
                for partition, sub in zip(self.partitions, subs, strict=True):
                    group.create_task(self._load(partition, sub))
                group.create_task(self._report())
        finally:
            self._js = None
            await js.close()

    def stop(self) -> None:
        """Finish the batches under way, then return from `run`."""
        self._stopping.set()

    async def _report(self) -> None:
        last = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PROGRESS_EVERY_S)
            if self.progress.records != last:
                last = self.progress.records
                log.info("loaded %d records in %d batches", last, self.progress.batches)

    async def _load(self, partition: int, sub: Subscription) -> None:
        failures = 0
        while not self._stopping.is_set():
            msgs = await self._fetch(partition, sub)
            if not msgs:
                continue
            try:
                await self._commit(partition, msgs)
                failures = 0
            except StoreError as exc:
                failures += 1
                await self._give_back(partition, msgs, exc, failures)

    async def _fetch(self, partition: int, sub: Subscription) -> list[Msg]:
        try:
            return await sub.fetch(self.settings.batch, timeout=FETCH_WAIT_S)
        except TimeoutError:
            return []  # nothing to load (or our last batch still waits for its ack)
        except NATS_ERRORS as exc:
            log.warning("partition %d: cannot fetch now: %s", partition, translate(exc, "fetch"))
            await self._pause(BACKOFF_S[0])
            return []

    async def _commit(self, partition: int, msgs: list[Msg]) -> None:
        entries = [decode_entry(m.data) for m in msgs]
        if any(m.metadata.num_delivered > 1 for m in msgs):
            self.progress.redelivered += 1
            entries = await self._not_yet_applied(entries)
        writes = batches_of(entries)
        if writes:
            await self.store.commit(writes)
        await self._ack(msgs)
        self.progress.loaded(partition, len(msgs))

    async def _ack(self, msgs: list[Msg]) -> None:
        # One ack per message, the last one confirmed: the server takes a
        # connection's acks in order, so once it has confirmed the last it has
        # all of them. Should acks be lost, the messages come again and commit
        # as duplicates.
        try:
            for msg in msgs[:-1]:
                await msg.ack()
            await msgs[-1].ack_sync(timeout=self.settings.timeout_ms / 1000)
        except NATS_ERRORS as exc:
            raise translate(exc, "acknowledge a loaded batch") from exc

    async def _not_yet_applied(self, entries: list[Entry]) -> list[Entry]:
        """A redelivered batch without the rejects its first delivery already committed.

        Accepts need no check: the store answers them `duplicate`. A reject is
        counted (`times`) on every commit, so one whose row already carries
        this very message's receipt time was committed before the loader died.
        """
        kept = []
        for entry in entries:
            if entry.kind == REJECT and await self._applied(entry):
                self.progress.skipped_rejects += 1
                continue
            kept.append(entry)
        return kept

    async def _applied(self, entry: Entry) -> bool:
        if entry.record is None:
            raw = entry.raw or ""
            if self.store.dialect == "postgres":
                raw = raw.replace("\x00", "\ufffd")  # as the store keeps it: text holds no NUL
            params: tuple[object, ...] = (entry.device, entry.received_at, entry.reason, raw)
            sql = _APPLIED_INVALID
        else:
            r = entry.record
            params = (r.device_id, r.journal_id, r.seq, r.checksum, entry.reason, entry.received_at)
            sql = _APPLIED_KEYED
        if self.store.dialect != "postgres":
            sql = sql.replace("%s", "?")
        return bool(await self.store.read_rows(sql, params))

    async def _give_back(self, partition: int, msgs: list[Msg], exc: StoreError, n: int) -> None:
        """Hand a batch that could not be committed back for redelivery, and back off."""
        log.warning(
            "partition %d: batch of %d not loaded (%s); retrying", partition, len(msgs), exc
        )
        with contextlib.suppress(*NATS_ERRORS):
            for msg in msgs:
                await msg.nak()
        await self._pause(BACKOFF_S[min(n, len(BACKOFF_S)) - 1])

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def backlog(settings: Settings, partitions: Sequence[int] | None = None) -> int:
    """Records in the stream not yet loaded (pending plus unacknowledged), over partitions."""
    js = await JetStream.connect(settings, "monitor")
    try:
        total = 0
        for p in range(settings.partitions) if partitions is None else partitions:
            state = await js.consumer_state(p)
            total += int(state["pending"]) + int(state["ack_pending"])
        return total
    finally:
        await js.close()


async def wait_loaded(settings: Settings, timeout_s: float = 60.0) -> None:
    """Return once the loaders have loaded everything published so far; StoreUnavailable if not."""
    deadline = time.monotonic() + timeout_s
    while (left := await backlog(settings)) > 0:
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"the loaders still have {left} records to load")
        await asyncio.sleep(0.1)
