"""Rejected records judged again, for the day a bug is fixed: `playproof rejects replay`.

Each reject is re-judged exactly as the ingest path would judge it (decode,
checksum, today's rules) in the context it arrived in (its batch's `sent_at`
and `received_at`, the device's registered store), then committed through the
store's own plan, so dedupe and sequences work as for any batch. The reject row
stays for audit with when it was replayed and what the record became; one that
became an impression no longer counts as a reject in the reconciliation.

A replay is idempotent: killed half-way and run again, a record already
replayed answers `duplicate`; rows already marked are not read again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from playproof import protocol
from playproof.errors import RecordError, StoreDataError
from playproof.protocol import InvalidRecord, Record
from playproof.rules import Context, Judge, Policy, judge_item
from playproof.server.signatures import judge_signature
from playproof.stores import queries
from playproof.stores.base import BatchWrite, DeviceInfo, Judged, Store

PAGE: Final = 500


def _item(raw: str, seq: int | None) -> Record | InvalidRecord:
    data = raw.encode()
    try:
        return protocol.decode_record(data)
    except RecordError as exc:
        return InvalidRecord(raw=data, error=str(exc), seq=seq)


def outcome(ack: protocol.Ack) -> str:
    """What a replayed record became: `accepted`, `duplicate` or `rejected:<reason>`."""
    return f"rejected:{ack.reason}" if ack.result == "rejected" else ack.result


def rejudge(row: tuple[Any, ...], device: DeviceInfo | None, policy: Policy) -> BatchWrite:
    """One reject row (id, submitted_by, seq, raw, sent_at, received_at) as a batch again."""
    _, submitted_by, seq, raw, sent_at, received_at = row
    store_id = device.store_id if device is not None else None
    rules = Judge(Context(submitted_by, store_id, sent_at, received_at), policy)
    item = _item(raw, seq)
    verdict = judge_item(item, rules)
    if isinstance(item, Record):
        # As on arrival: a replay must never accept what its signature (or its device's
        # keys, as they are now) would refuse. A device the registry does not know holds
        # no keys: its version-2 records are refused.
        known = device or DeviceInfo(submitted_by, "", 0, None)
        verdict = judge_signature(item, verdict, known, received_at)
    return BatchWrite(submitted_by, sent_at, received_at, [Judged(item, verdict)])


async def replay(store: Store, reason: str, since: int, policy: Policy, now: int) -> Counter[str]:
    """Re-judge every reject of `reason` received since `since`; counts by outcome."""
    counts: Counter[str] = Counter()
    devices: dict[str, DeviceInfo | None] = {}
    after = 0
    while rows := await queries.replay_candidates(store, reason, since, after, PAGE):
        marks: list[tuple[int, str]] = []
        for row in rows:
            after = row[0]
            if row[1] not in devices:
                devices[row[1]] = await store.get_device(row[1])
            write = rejudge(row, devices[row[1]], policy)
            if write.judged[0].verdict.reason == reason:
                # Judged the same again: committing would only add an audit row.
                marks.append((row[0], f"rejected:{reason}"))
            else:
                try:
                    acks = await store.commit([write])
                except StoreDataError:
                    counts["refused by the store again"] += 1
                    continue  # left unmarked: a later replay, after the fix, takes it
                marks.append((row[0], outcome(acks[0][0])))
            counts[marks[-1][1]] += 1
        await store.mark_replayed(marks, now)
    return counts
