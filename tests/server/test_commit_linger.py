"""The committer's bounded linger (issue 17) batches more frames per transaction at light
load, and changes nothing about when an ack may leave: only after its commit.

The sink is a fake whose commit waits on a gate, so that what is answered before the
transaction ends can be seen. Counts are asserted, never timings: the spacings only make
the arrivals look like a steady trickle (gaps far below the linger) or like lone batches
(gaps far above it), which a slow machine only stretches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from playproof.protocol import Ack
from playproof.server.committer import GroupCommitter
from playproof.stores.base import BatchWrite
from tests.stores.pipeline import batch
from tests.support import make_record


class GatedSink:
    """Commits when its gate opens; remembers each group and what it has made durable."""

    commit_lanes = 1

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.groups: list[int] = []
        self.durable: set[str] = set()

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        self.groups.append(len(writes))
        await self.gate.wait()
        self.durable.update(w.device_id for w in writes)
        return [[Ack(seq=j.item.seq, result="accepted") for j in w.judged] for w in writes]


def one_record(n: int) -> BatchWrite:
    device = f"scr-linger-{n}"
    return batch([make_record(device_id=device, seq=1)], device)


async def test_a_lingering_lane_groups_a_trickle_and_answers_only_after_the_commit() -> None:
    sink = GatedSink()
    committer = GroupCommitter(sink, max_linger_s=0.5)
    committer.start()
    answered_early: list[int] = []

    def submit(n: int) -> asyncio.Task[list[Ack]]:
        write = one_record(n)
        task = asyncio.ensure_future(committer.commit(write))
        task.add_done_callback(
            lambda _: None if write.device_id in sink.durable else answered_early.append(n)
        )
        return task

    try:
        tasks = []
        for n in range(4):  # a trickle: about 10 ms apart, far below the linger
            tasks.append(submit(n))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks), "nothing is answered before its commit"
        sink.gate.set()
        answers = await asyncio.gather(*tasks)
    finally:
        await committer.stop()
    assert answered_early == []
    assert [[(a.seq, a.result) for a in acks] for acks in answers] == [[(1, "accepted")]] * 4
    assert sum(sink.groups) == 4, "every batch committed exactly once"
    assert committer.lingered >= 1
    assert len(sink.groups) < 4, "the trickle shared transactions"


async def test_a_lone_batch_never_waits_for_company() -> None:
    sink = GatedSink()
    sink.gate.set()
    committer = GroupCommitter(sink, max_linger_s=0.001)
    committer.start()
    try:
        for n in range(3):  # 100 ms apart: a hundred times the linger
            assert await committer.commit(one_record(n)) == [Ack(seq=1, result="accepted")]
            await asyncio.sleep(0.1)
    finally:
        await committer.stop()
    assert committer.lingered == 0
    assert sink.groups == [1, 1, 1]


async def test_batches_queued_at_once_share_one_transaction() -> None:
    sink = GatedSink()
    sink.gate.set()
    committer = GroupCommitter(sink, max_linger_s=0.5)
    tasks = [asyncio.ensure_future(committer.commit(one_record(n))) for n in range(5)]
    await asyncio.sleep(0)
    committer.start()
    try:
        await asyncio.gather(*tasks)
    finally:
        await committer.stop()
    assert sink.groups == [5]
