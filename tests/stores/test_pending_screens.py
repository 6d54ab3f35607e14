"""The verifier's reads of what is pending, on both stores: the screens with settled plays
pending (by id, at most `limit`) and the oldest pending play, found by a skip scan of the
pending index (one seek a screen), not by walking every pending play."""

from __future__ import annotations

from playproof.stores import verification_queries as vq
from playproof.stores.base import Store
from tests.stores.pipeline import batch
from tests.support import make_record

T = 1_800_000_000_000


async def commit(store: Store, device: str, seqs: range, received_at: int) -> None:
    records = [make_record(device_id=device, seq=s, end_ts=T - 60_000 + s) for s in seqs]
    await store.commit([batch(records, device, received_at=received_at)])


async def test_settled_screens_come_by_id_and_the_oldest_pending_play_is_found(
    store: Store,
) -> None:
    assert await vq.pending_screens(store, T, 10) == []
    assert await vq.oldest_pending(store) is None
    await commit(store, "scr-c", range(1, 4), T + 5)  # received after the watermark
    await commit(store, "scr-a", range(1, 3), T - 10)
    await commit(store, "scr-b", range(1, 6), T - 30)
    await commit(store, "scr-d", range(1, 2), T)  # received at the watermark: settled
    assert await vq.pending_screens(store, T, 10) == ["scr-a", "scr-b", "scr-d"]
    assert await vq.pending_screens(store, T, 2) == ["scr-a", "scr-b"]
    assert await vq.pending_screens(store, T + 5, 10) == ["scr-a", "scr-b", "scr-c", "scr-d"]
    assert await vq.oldest_pending(store) == T - 30
