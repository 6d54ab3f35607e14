"""The ingest side of the pipeline: judged batches go to JetStream, acks come from its answers.

The stream itself decides, per sequence key, as PostgreSQL's journal lock
does on the store path. A record whose key (device, journal, seq) is tracked
is published with `Nats-Msg-Id: device/journal/seq`. JetStream stores the
first message of an id and answers every later one within the dedupe window
with the first one's sequence; the node reads that message and compares:

- stored: the message is now in the stream (replicated) and holds the key:
  `accepted` (or the rule's rejection, see below);
- the holder is an accept with the same checksum: `duplicate`;
- the holder is an accept with another checksum: `rejected: conflict`, and
  that reject is published too, so that the loader keeps it for audit.

A record the rules reject does not hold its key for good: a later resend may
be accepted (its clock fixed, say). So rejections take a link of a chain of
ids, `device/journal/seq`, `.../1`, `.../2`, ...: a claim that finds a reject
at link i tries link i + 1, and only an accept ends the chain. Every decision
about a key is thus one total order, the order of the stream, which is also
the order in which the loader replays them into the store. Untracked items
(undecodable, `forbidden`, `bad_checksum`) are published without an id; a
`bad_signature` is tracked like a reject, but never becomes a `conflict`.

No ack leaves before JetStream's own publish acknowledgement. A node that
dies after JetStream stored a message but before answering leaves the key
held: the resend finds it and is answered `duplicate`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from playproof.errors import StoreError, StoreUnavailable
from playproof.pipeline.codec import (
    ACCEPT,
    Entry,
    conflict_of,
    decode_entry,
    encode_entry,
    entry_for,
    msg_id,
    partition_of,
)
from playproof.pipeline.jetstream import JetStream
from playproof.pipeline.settings import Settings
from playproof.protocol import Ack, Record
from playproof.rules import BAD_SIGNATURE, DEFAULT_POLICY, Policy, dedupe_first
from playproof.stores.base import BatchWrite, Key

log = logging.getLogger(__name__)

COMMIT_LANES: Final = 4
# A key is rejected again only when a reject's ack was lost and the record was
# resent: a chain this long is a device resending one record over and over.
MAX_LINKS: Final = 64


@dataclass
class _Item:
    """One judged item on its way: where its ack goes, what is published, its key if tracked."""

    where: tuple[int, int]
    partition: int
    entry: Entry
    key: Key | None

    @property
    def seq(self) -> int | None:
        """The item's sequence: the record's, or the one read from an undecodable item."""
        return self.entry.record.seq if self.entry.record is not None else self.entry.seq

    def stored_ack(self) -> Ack:
        """The ack of an item whose own message is now in the stream."""
        entry = self.entry
        if entry.kind == ACCEPT:
            status, flags = entry.status, list(entry.flags)
            return Ack(self.seq, "accepted", status, entry.quality, flags)  # type: ignore[arg-type]
        return Ack(self.seq, "rejected", reason=entry.reason)  # type: ignore[arg-type]


def _items(writes: Sequence[BatchWrite], partitions: int) -> list[_Item]:
    items = []
    for w, write in enumerate(writes):
        partition = partition_of(write.device_id, partitions)
        for i, (item, verdict) in enumerate(write.judged):
            key = None
            # A bad signature is tracked too: a resend of an accepted record is still a
            # duplicate after its key's revocation (PROTOCOL.md section 7's order).
            if isinstance(item, Record) and dedupe_first(verdict.reason):
                key = (item.device_id, item.journal_id, item.seq)
            items.append(_Item((w, i), partition, entry_for(write, item, verdict), key))
    return items


def _split(items: list[_Item]) -> tuple[list[_Item], dict[Key, list[_Item]]]:
    """Items whose key is theirs alone in the group, and the keys several items share."""
    counts: dict[Key, int] = {}
    for item in items:
        if item.key is not None:
            counts[item.key] = counts.get(item.key, 0) + 1
    single = [i for i in items if i.key is None or counts[i.key] == 1]
    shared: dict[Key, list[_Item]] = {}
    for item in items:
        if item.key is not None and counts[item.key] > 1:
            shared.setdefault(item.key, []).append(item)
    return single, shared


class JetStreamSink:
    """A `Sink` for the group committer: records go to JetStream, loaders take them on."""

    commit_lanes: int = COMMIT_LANES
    kind = "jetstream"

    def __init__(self, settings: Settings, policy: Policy = DEFAULT_POLICY) -> None:
        settings.check_window(policy)
        self.settings = settings
        self.url = settings.url
        self._js: JetStream | None = None

    async def open(self) -> None:
        """Connect and make sure every partition stream exists."""
        js = await JetStream.connect(self.settings, "ingest")
        try:
            await js.ensure_streams()
        except BaseException:
            await js.close()
            raise
        self._js = js

    async def close(self) -> None:
        """Close the connection (after the committer has stopped)."""
        if self._js is not None:
            await self._js.close()
            self._js = None

    async def ping(self) -> None:
        """StoreUnavailable unless every partition stream answers now."""
        await self._connected().ping()

    def _connected(self) -> JetStream:
        if self._js is None:
            raise StoreUnavailable("JetStream is not connected: the pipeline is not open")
        return self._js

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        """Publish every judged item; each batch's acks once JetStream has acknowledged them.

        The whole commit has a deadline, not just the wait for acks: around a
        reconnect, nats-py's publish itself can wait on its flusher, and a lane
        that waits forever would leave its devices waiting too.
        """
        deadline = self.settings.timeout_ms / 1000
        try:
            return await asyncio.wait_for(self._commit(writes), deadline)
        except TimeoutError:
            message = f"JetStream did not take the records within {deadline:g} s"
            raise StoreUnavailable(message) from None

    async def _commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        js = self._connected()
        acks: list[list[Ack | None]] = [[None] * len(w.judged) for w in writes]
        single, shared = _split(_items(writes, self.settings.partitions))
        messages = [(i.partition, encode_entry(i.entry), _first_id(i.key)) for i in single]
        slow: list[Coroutine[Any, Any, None]] = []
        for item, puback in zip(single, await js.publish_many(messages), strict=True):
            if item.key is not None and puback.duplicate:
                slow.append(self._settle_into(acks, item, held_seq=puback.seq))
            else:
                _put(acks, item, item.stored_ack())
        slow += [self._settle_in_order(acks, items) for items in shared.values()]
        await _all(slow)
        return [[a for a in batch if a is not None] for batch in acks]

    async def _settle_in_order(self, acks: list[list[Ack | None]], items: list[_Item]) -> None:
        # One key several times in a group: in arrival order, as the store's plan does.
        for item in items:
            await self._settle_into(acks, item)

    async def _settle_into(
        self, acks: list[list[Ack | None]], item: _Item, held_seq: int | None = None
    ) -> None:
        _put(acks, item, await self._settle(item, held_seq))

    async def _settle(self, item: _Item, held_seq: int | None = None) -> Ack:
        """Walk the key's chain from its first link until the item is stored or meets an accept."""
        js, key = self._connected(), item.key
        assert key is not None
        payload = encode_entry(item.entry)
        for link in range(MAX_LINKS):
            if held_seq is None:
                puback = await js.publish_one(item.partition, payload, msg_id(key, link))
                if not puback.duplicate:
                    return item.stored_ack()
                held_seq = puback.seq
            held = decode_entry(await js.get(item.partition, held_seq))
            _check_holder(held, key)
            if held.kind == ACCEPT:
                return await self._against(item, held)
            held_seq = None
        return await self._past_chain(item)

    async def _against(self, item: _Item, held: Entry) -> Ack:
        """The answer for a record whose key an accept holds: duplicate, or a conflict kept."""
        if held.checksum == item.entry.checksum:
            return Ack(item.seq, "duplicate")
        js = self._connected()
        if item.entry.reason == BAD_SIGNATURE:
            # Before `conflict` in the order: kept as it was judged, holding nothing.
            await js.publish_one(item.partition, encode_entry(item.entry))
            return item.stored_ack()
        await js.publish_one(item.partition, encode_entry(conflict_of(item.entry)))
        return Ack(item.seq, "rejected", reason="conflict")

    async def _past_chain(self, item: _Item) -> Ack:
        if item.entry.kind == ACCEPT:
            raise StoreUnavailable(
                f"sequence {item.key} was rejected {MAX_LINKS} times within the dedupe window; "
                "send again later"
            )
        js = self._connected()
        await js.publish_one(item.partition, encode_entry(item.entry))
        return item.stored_ack()


def _first_id(key: Key | None) -> str | None:
    return None if key is None else msg_id(key)


def _put(acks: list[list[Ack | None]], item: _Item, ack: Ack) -> None:
    w, i = item.where
    acks[w][i] = ack


def _check_holder(held: Entry, key: Key) -> None:
    record = held.record
    if record is None or (record.device_id, record.journal_id, record.seq) != key:
        raise StoreError(f"expected the message holding {key} to be that record, got another")


async def _all(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines together; the first failure fails the group (nothing is acked)."""
    if not coros:
        return
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except* StoreError as failed:
        raise failed.exceptions[0] from None
