"""Group commit: batches that arrive while a commit runs share the next transaction.

No timer is involved: under light load every batch commits at once; under
heavy load each transaction carries everything that queued meanwhile, up to a
bound, so that many small frames do not each pay an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from playproof.errors import StoreError, StoreUnavailable
from playproof.protocol import Ack
from playproof.stores.base import BatchWrite

log = logging.getLogger(__name__)

_Pending = tuple[BatchWrite, "asyncio.Future[list[Ack]]"]


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
    ) -> None:
        self._sink = sink
        self._max_records = max_records
        self._workers = workers
        self._observe = observe
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
        fut: asyncio.Future[list[Ack]] = asyncio.get_running_loop().create_future()
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
            group = self._take()
            if not group:
                continue
            started = loop.time()
            await self._commit_group(group)
            if self._observe is not None:
                records = sum(len(w.judged) for w, _ in group)
                self._observe(len(group), records, loop.time() - started)

    async def _commit_group(self, group: list[_Pending]) -> None:
        try:
            results = await self._sink.commit([write for write, _ in group])
        except StoreError as exc:
            _fail(group, exc)
        except Exception as exc:
            log.exception("commit failed unexpectedly")
            _fail(group, StoreUnavailable(f"commit failed: {exc}"))
        else:
            for (_, fut), acks in zip(group, results, strict=True):
                if not fut.done():
                    fut.set_result(acks)


def _fail(group: list[_Pending], exc: StoreError) -> None:
    error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
    for _, fut in group:
        if not fut.done():
            fut.set_exception(error)
