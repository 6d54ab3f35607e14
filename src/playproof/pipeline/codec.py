"""What travels in the stream: one message per judged item, and how a loader rebuilds batches.

Every message carries what the store's own commit needs to write the very
rows the store path writes: the record (or an undecodable item's text), the
ingest node's final verdict on it, the batch's `sent_at` and `received_at`,
and the authenticated device. A loader turns consecutive messages of one
batch back into a `BatchWrite` and hands it to `Store.commit`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Final, Literal

import msgspec

from playproof.errors import StoreError
from playproof.protocol import InvalidRecord, Record
from playproof.rules import Verdict, reject
from playproof.stores.base import BatchWrite, Judged, Key

ACCEPT: Final = "accept"
REJECT: Final = "reject"
Kind = Literal["accept", "reject"]
# An undecodable item's text beyond this is cut (with a note) so that its
# message fits NATS's 1 MB payload limit; a real record is under 1 KiB.
MAX_RAW_CHARS: Final = 256 * 1024


class Entry(msgspec.Struct, array_like=True, kw_only=True):
    """One judged item, as published: `accept` claims its key, `reject` is kept for audit."""

    kind: Kind
    device: str
    sent_at: int
    received_at: int
    record: Record | None = None
    raw: str | None = None
    error: str = ""
    seq: int | None = None
    reason: str | None = None
    status: str | None = None
    quality: int = 0
    flags: tuple[str, ...] = ()

    @property
    def checksum(self) -> str | None:
        """The record's checksum (None for an undecodable item)."""
        return None if self.record is None else str(self.record.checksum)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Entry)


def partition_of(device_id: str, partitions: int) -> int:
    """The partition of a device: stable across processes, machines and versions."""
    return zlib.crc32(device_id.encode()) % partitions


def msg_id(key: Key, link: int = 0) -> str:
    """The Nats-Msg-Id of a key's `link`-th claim: device/journal/seq (ids never hold `/`)."""
    base = f"{key[0]}/{key[1]}/{key[2]}"
    return base if link == 0 else f"{base}/{link}"


def entry_for(write: BatchWrite, item: Record | InvalidRecord, verdict: Verdict) -> Entry:
    """The message for one judged item of a batch (an accept when the rules accept it)."""
    entry = Entry(
        kind=REJECT, device=write.device_id, sent_at=write.sent_at, received_at=write.received_at
    )
    if isinstance(item, InvalidRecord):
        raw = item.raw.decode("utf-8", "replace")
        if len(raw) > MAX_RAW_CHARS:
            raw = raw[:MAX_RAW_CHARS] + f"... [cut: {len(raw)} characters in all]"
        entry.raw, entry.error, entry.seq, entry.reason = raw, item.error, item.seq, "invalid"
        return entry
    entry.record = item
    if verdict.reason is not None:
        entry.reason, entry.error = verdict.reason, verdict.detail
        return entry
    entry.kind, entry.status, entry.quality = ACCEPT, verdict.status, verdict.quality
    entry.flags = verdict.flags
    return entry


def conflict_of(entry: Entry) -> Entry:
    """The reject to keep for a record whose key is held by another checksum."""
    return msgspec.structs.replace(
        entry, kind=REJECT, reason="conflict", status=None, quality=0, flags=()
    )


def encode_entry(entry: Entry) -> bytes:
    """An entry as the message payload."""
    return _encoder.encode(entry)


def decode_entry(payload: bytes) -> Entry:
    """A message payload as an entry; StoreError for a message no ingest node wrote."""
    try:
        return _decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise StoreError(
            f"expected a playproof pipeline message, got one that is not: {exc}"
        ) from None


def judged_of(entry: Entry) -> Judged:
    """The item and verdict a store's commit takes, as the ingest node decided them."""
    if entry.record is None:
        raw = (entry.raw or "").encode()
        return Judged(InvalidRecord(raw=raw, error=entry.error, seq=entry.seq), reject("invalid"))
    if entry.kind == REJECT:
        return Judged(entry.record, reject(entry.reason or "invalid", entry.error))
    return Judged(entry.record, Verdict(None, entry.status, entry.quality, tuple(entry.flags)))


def batches_of(entries: Iterable[Entry]) -> list[BatchWrite]:
    """Consecutive entries of one batch (same device, sent_at, received_at) as BatchWrites."""
    writes: list[BatchWrite] = []
    for entry in entries:
        head = (entry.device, entry.sent_at, entry.received_at)
        last = writes[-1] if writes else None
        if last is None or (last.device_id, last.sent_at, last.received_at) != head:
            last = BatchWrite(entry.device, entry.sent_at, entry.received_at, [])
            writes.append(last)
        last.judged.append(judged_of(entry))
    return writes


def keys_of(entries: Sequence[Entry]) -> set[Key]:
    """The sequence keys the accepts among `entries` claim."""
    return {
        (e.record.device_id, e.record.journal_id, e.record.seq)
        for e in entries
        if e.kind == ACCEPT and e.record is not None
    }
