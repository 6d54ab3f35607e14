"""Group commit: batches that arrive while a commit runs share the next transaction.

Under heavy load each transaction carries everything that queued meanwhile, up
to a bound, so that many small frames do not each pay an fsync. Under light load
a batch that finds the lane idle would commit alone: one transaction and one fsync
per 1-record stream frame. So a lane that wakes to fewer batches than it expects to
arrive within `max_linger_s` (from the recent gaps between arrivals) waits that long
first, once, and commits them together (issue 17: at 1000 frames/s a commit then
carries about three frames instead of one). The wait is bounded and only taken when
more is expected: an isolated batch, and a lane already behind, never wait. Acks are
still answered only when the transaction carrying them has committed.

A group that fails for any reason but a store outage is split: each batch is
committed alone, so that one device's poison batch cannot fail its neighbours;
a batch that fails alone on its data is committed record by record (see
`by_record`). A store outage fails the whole group at once: every batch would
fail alone too, and retrying each would only multiply the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from playproof.errors import StoreDataError, StoreError, StoreUnavailable
from playproof.protocol import Ack, InvalidRecord, Record, record_json
from playproof.rules import reject
from playproof.stores.base import BatchWrite, Judged

log = logging.getLogger(__name__)

_Pending = tuple[BatchWrite, "asyncio.Future[list[Ack]]"]
# The longest a lane waits for more batches before committing a small group. Bounded by
# the stream's ack latency target (p99 ≤ 5 ms at 1000 frames/s, of which the disk's
# fsync takes about 1-2 ms here).
MAX_LINGER_S = 0.0015
# Weight of the newest gap between arrivals in their moving average.
GAP_WEIGHT = 0.1


class Sink(Protocol):
    """Where judged batches are made durable: a store, or a pipeline in front of one."""

    commit_lanes: int

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        """Make the batches durable together; each batch's acks, in order."""


class GroupCommitter:
    """Coalesces concurrent commits into shared transactions on `workers` lanes."""

    def __init__(
        self,
        sink: Sink,
        max_records: int = 20_000,
        workers: int = 1,
        observe: Callable[[int, int, float], None] | None = None,
        max_linger_s: float = MAX_LINGER_S,
    ) -> None:
        self._sink = sink
        self._max_records = max_records
        self._workers = workers
        self._observe = observe
        self._max_linger_s = max_linger_s
        self._gap = math.inf  # moving average of the seconds between batches arriving
        self._last_arrival = -math.inf
        self.lingered = 0  # groups that waited for company (for tests and profiles)
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the commit lanes."""
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self._workers)]

    async def stop(self) -> None:
        """Stop the lanes; whatever is still queued is told the store is unavailable."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(StoreUnavailable("the service is shutting down"))

    async def commit(self, write: BatchWrite) -> list[Ack]:
        """Commit one batch (together with whatever else is queued) and return its acks."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_arrival != -math.inf:
            gap = now - self._last_arrival
            self._gap = gap if self._gap == math.inf else self._gap + GAP_WEIGHT * (gap - self._gap)
        self._last_arrival = now
        fut: asyncio.Future[list[Ack]] = loop.create_future()
        self._queue.append((write, fut))
        self._wakeup.set()
        return await fut

    @property
    def queued(self) -> int:
        """Batches waiting for a transaction."""
        return len(self._queue)

    def _take(self) -> list[_Pending]:
        group: list[_Pending] = []
        records = 0
        while self._queue and (not group or records < self._max_records):
            write, fut = self._queue.popleft()
            if fut.done():
                continue
            group.append((write, fut))
            records += len(write.judged)
        return group

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._worth_lingering():
                self.lingered += 1
                await asyncio.sleep(self._max_linger_s)
            group = self._take()
            if not group:
                continue
            started = loop.time()
            await self._commit_group(group)
            if self._observe is not None:
                records = sum(len(w.judged) for w, _ in group)
                self._observe(len(group), records, loop.time() - started)

    def _worth_lingering(self) -> bool:
        # More batches are expected within the linger than are queued now: wait for
        # them. At saturation the queue is long when a lane comes back, and a lone batch
        # (the gaps are longer than the linger) never waits.
        if self._max_linger_s <= 0 or self._gap <= 0:
            return False
        return len(self._queue) < self._max_linger_s / self._gap

    async def _commit_group(self, group: list[_Pending]) -> None:
        try:
            results = await self._sink.commit([write for write, _ in group])
        except StoreUnavailable as exc:
            _fail(group, exc)
        except Exception as exc:
            if len(group) > 1:
                log.warning("a group of %d batches failed (%s); each alone now", len(group), exc)
            for write, fut in group:
                try:
                    acks = await self._alone(write, exc if len(group) == 1 else None)
                except Exception as alone:
                    _report(alone)
                    _fail([(write, fut)], alone)
                else:
                    _resolve(fut, acks)
        else:
            for (_, fut), acks in zip(group, results, strict=True):
                _resolve(fut, acks)

    async def _alone(self, write: BatchWrite, failed: Exception | None = None) -> list[Ack]:
        """One batch in a transaction of its own; record by record when its data fails it."""
        if failed is None:
            try:
                return (await self._sink.commit([write]))[0]
            except StoreDataError as exc:
                failed = exc
        if not isinstance(failed, StoreDataError):
            raise failed
        log.warning("a batch of device %r failed on its data: %s", write.device_id, failed)
        return await by_record(self._sink, write)


def _resolve(fut: asyncio.Future[list[Ack]], acks: list[Ack]) -> None:
    if not fut.done():
        fut.set_result(acks)


async def by_record(sink: Sink, write: BatchWrite) -> list[Ack]:
    """Commit each record of a batch in a transaction of its own, in order.

    A record that fails alone on its data is rejected `invalid`, the store's
    error kept with it; any other failure propagates and the batch is answered
    503 (the records committed before it are `duplicate` when it is resent).
    """
    return [await _one(sink, write, judged) for judged in write.judged]


async def _one(sink: Sink, write: BatchWrite, judged: Judged) -> Ack:
    try:
        return (await sink.commit([_single(write, judged)]))[0][0]
    except StoreDataError as exc:
        error: StoreDataError = exc
    detail = f"the store refused to keep it: {str(error)[:MAX_DETAIL]}"
    for fallback in _rejections(judged.item, detail):
        try:
            return (await sink.commit([_single(write, fallback)]))[0][0]
        except StoreDataError as exc:
            error = exc
    raise error


MAX_DETAIL = 500


def _single(write: BatchWrite, judged: Judged) -> BatchWrite:
    # No draft: the store plans the one record afresh.
    return write._replace(judged=[judged], draft=None)


def _rejections(item: Record | InvalidRecord, detail: str) -> list[Judged]:
    """How to keep a record the store refused: as a reject, then with its raw text escaped."""
    raw = item.raw if isinstance(item, InvalidRecord) else record_json(item)
    # JSON-escaped, so that not even a NUL or a lone surrogate can refuse the audit row.
    escaped = json.dumps(raw.decode("utf-8", "replace")).encode()
    error = detail if isinstance(item, Record) else f"{item.error}; {detail}"
    last = Judged(InvalidRecord(raw=escaped, error=error, seq=item.seq), reject("invalid"))
    if isinstance(item, Record):
        return [Judged(item, reject("invalid", detail)), last]
    return [last]


def _report(exc: Exception) -> None:
    if not isinstance(exc, StoreError):
        log.error("commit failed unexpectedly", exc_info=exc)


def _fail(group: list[_Pending], exc: Exception) -> None:
    # Whatever went wrong, the device is told only that nothing was committed.
    error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"commit failed: {exc}")
    for _, fut in group:
        if not fut.done():
            fut.set_exception(error)
