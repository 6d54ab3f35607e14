"""What the ingest pipeline hands a store, built with its real pieces: decode, verify, judge."""

from __future__ import annotations

import json
from typing import Any

from playproof import protocol
from playproof.protocol import Ack, Record
from playproof.rules import Context, Judge, judge_item
from playproof.stores.base import BatchWrite, Judged, Store
from tests.support import now_ms

DEVICE = "scr-1"
STORE = "store-1"

Item = Record | dict[str, Any]


def tampered(record: Record, **changes: Any) -> Record:
    """The record with fields changed after sealing: its checksum no longer matches."""
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def batch(
    items: list[Item],
    device_id: str = DEVICE,
    *,
    sent_at: int | None = None,
    received_at: int | None = None,
    store_id: str = STORE,
) -> BatchWrite:
    """A batch from `device_id`: encoded as on the wire, decoded, checksummed and judged."""
    received = now_ms() if received_at is None else received_at
    sent = received if sent_at is None else sent_at
    body = json.dumps(
        {
            "device_id": device_id,
            "sent_at": sent,
            "impressions": [
                item if isinstance(item, dict) else json.loads(protocol.encode(item))
                for item in items
            ],
        }
    ).encode()
    decoded = protocol.decode_batch(body)
    rules = Judge(Context(device_id, store_id, decoded.sent_at, received))
    judged = [Judged(i, judge_item(i, rules)) for i in decoded.items]
    return BatchWrite(device_id, decoded.sent_at, received, judged)


def brief(ack: Ack) -> tuple[Any, ...]:
    """An ack as a short tuple: (seq, result, status or reason)."""
    detail = ack.reason if ack.result == "rejected" else ack.status
    return (ack.seq, ack.result, None if detail is protocol.UNSET else detail)


async def commit(store: Store, *writes: BatchWrite) -> list[list[tuple[Any, ...]]]:
    """Commit the batches together and return their acks, brief."""
    return [[brief(a) for a in acks] for acks in await store.commit(list(writes))]


async def commit_one(store: Store, write: BatchWrite) -> list[tuple[Any, ...]]:
    """Commit one batch and return its acks, brief."""
    return (await commit(store, write))[0]
