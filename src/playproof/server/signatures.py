"""Signature checks at ingest (PROTOCOL.md section 7), off the event loop and batched.

What needs no cryptography is decided at once, on the event loop: a version-1
record from a device that must sign, a version-2 record whose `key_id` is not
a key of the device active when it was received. The Ed25519 verifications
left over (about 63 µs of CPU each here, more than everything else ingest does
for a record) run in a thread pool across the cores: PyNaCl (libsodium, through
cffi) releases the GIL while it verifies. Like the group committer, a checker
coalesces: the records of every batch that queues while the workers are busy go
to the pool together
in the next job, so that a flood of one-record stream frames does not pay a
pool hand-off per frame. A batch with nothing to verify (a device without keys
sending version 1) never touches the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, NamedTuple

from nacl.signing import VerifyKey

from playproof.errors import StoreUnavailable
from playproof.protocol import Record
from playproof.rules import BAD_SIGNATURE, Verdict, reject
from playproof.server.metrics import Metrics
from playproof.signing import signature_error, verify_key
from playproof.stores.base import BatchWrite, DeviceInfo, DeviceKey, Judged

# Verdicts decided before the signature in PROTOCOL.md's order: such a record is
# not worth verifying (and a forbidden one names another device's keys).
_BEFORE_SIGNATURE: Final = frozenset(("bad_checksum", "forbidden"))
# Records one pool job verifies at most: a job stays short, so a worker that took a
# huge backlog does not leave the other cores idle.
JOB_RECORDS: Final = 2000
# A batch is cut into parts for several workers only past this many records a part.
SPLIT_RECORDS: Final = 64
# Public key objects kept, by (device, key id, key): past it the cache starts afresh.
KEY_CACHE_ENTRIES: Final = 100_000


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def refusal(record: Record, device: DeviceInfo, received_at: int) -> str | DeviceKey:
    """Why `record` is refused `bad_signature` without any cryptography, or the key that
    must verify it ("" when the record needs no signature: a version-1 record from a device
    that need not sign)."""
    if record.v == 1:
        if device.keys:
            first = min(device.keys, key=lambda k: k.registered_at)
            return (
                f"version 1 refused: device {device.device_id} has signed since key "
                f"{first.key_id} was registered at {first.registered_at}"
            )
        if device.signatures_required:
            return (
                f"version 1 refused: an operator requires signatures from device {device.device_id}"
            )
        return ""
    key = next((k for k in device.keys if k.key_id == record.key_id), None)
    if key is None:
        return f"unknown key {record.key_id}: not registered for device {device.device_id}"
    if key.revoked_at is not None and received_at >= key.revoked_at:
        return f"key {key.key_id} revoked at {key.revoked_at}, record received at {received_at}"
    if not key.active_at(received_at):
        return (
            f"key {key.key_id} registered at {key.registered_at}, "
            f"after the record was received at {received_at}"
        )
    return key


def judge_signature(
    record: Record, verdict: Verdict, device: DeviceInfo, received_at: int
) -> Verdict:
    """The verdict once the signature is checked, on the calling thread: for work off the
    ingest path (a replay of rejects judges a record as it was judged on arrival)."""
    if verdict.reason in _BEFORE_SIGNATURE:
        return verdict
    found = refusal(record, device, received_at)
    if isinstance(found, DeviceKey):
        public = verify_key(bytes.fromhex(found.public_key))
        found = signature_error(record, public)
    return _refused(found) if found else verdict


def _verify_all(jobs: Sequence[tuple[Record, VerifyKey]]) -> list[str]:
    return [signature_error(record, key) for record, key in jobs]


class _Request(NamedTuple):
    jobs: list[tuple[Record, VerifyKey]]
    future: asyncio.Future[list[str]]


class SignatureChecker:
    """Decides `bad_signature` for judged batches; verifies on `workers` threads."""

    def __init__(self, workers: int | None = None, metrics: Metrics | None = None) -> None:
        self.workers = workers or default_workers()
        self._metrics = metrics
        self._pool: ThreadPoolExecutor | None = None
        self._queue: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._keys: dict[tuple[str, str, str], VerifyKey] = {}

    @staticmethod
    def needed(write: BatchWrite, device: DeviceInfo) -> bool:
        """Whether `apply` has anything to do: not for version 1 from a device that need not
        sign (the caller may skip the awaits: issue 17, a 1-record frame's every step)."""
        return bool(device.keys or device.signatures_required or _any_signed(write))

    async def apply(self, write: BatchWrite, device: DeviceInfo) -> BatchWrite:
        """The batch with `bad_signature` verdicts where PROTOCOL.md's order puts them.

        A signature failure overrides the rules' verdict (the range checks and clock
        rules come after it); undecodable, bad_checksum and forbidden records keep theirs.
        """
        if not self.needed(write, device):
            return write
        judged = list(write.judged)
        pending: list[int] = []
        jobs: list[tuple[Record, VerifyKey]] = []
        for i, (item, verdict) in enumerate(judged):
            if not isinstance(item, Record) or verdict.reason in _BEFORE_SIGNATURE:
                continue
            found = refusal(item, device, write.received_at)
            if isinstance(found, DeviceKey):
                pending.append(i)
                jobs.append((item, self._key(found)))
            elif found:
                judged[i] = Judged(item, _refused(found))
        bad = 0
        refused = sum(1 for j in judged if j.verdict.reason == BAD_SIGNATURE)
        if jobs:
            errors = await self.verify(jobs)
            for i, error in zip(pending, errors, strict=True):
                if error:
                    judged[i] = Judged(judged[i].item, _refused(error))
                    bad += 1
        if self._metrics is not None:
            counts = (("good", len(jobs) - bad), ("bad", bad), ("refused", refused))
            for result, n in counts:
                if n:
                    self._metrics.signature_checks.labels(result).inc(n)
        return write._replace(judged=judged)

    async def verify(self, jobs: list[tuple[Record, VerifyKey]]) -> list[str]:
        """Verify signatures in the pool, with whatever else is queued; each one's error.

        A large batch is cut into one part per worker, so that it alone keeps every core
        busy; small ones stay whole (a part per record would pay a hand-off per record).
        """
        self._start()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        size = max(SPLIT_RECORDS, -(-len(jobs) // self.workers))
        futures: list[asyncio.Future[list[str]]] = []
        for start in range(0, len(jobs), size):
            future: asyncio.Future[list[str]] = loop.create_future()
            self._queue.append(_Request(jobs[start : start + size], future))
            futures.append(future)
        self._wakeup.set()
        if len(futures) == 1:
            return await futures[0]
        parts = await asyncio.gather(*futures)
        return [error for part in parts for error in part]

    @property
    def started(self) -> bool:
        """Whether the pool and its workers exist: not before the first signature to verify."""
        return self._pool is not None

    def _key(self, key: DeviceKey) -> VerifyKey:
        cache_key = (key.device_id, key.key_id, key.public_key)
        found = self._keys.get(cache_key)
        if found is None:
            if len(self._keys) >= KEY_CACHE_ENTRIES:
                self._keys.clear()
            # Registration refused small-order and non-canonical keys: what is stored is good.
            found = verify_key(bytes.fromhex(key.public_key))
            self._keys[cache_key] = found
        return found

    def _start(self) -> None:
        # Lazily, on the running loop: a service that never sees a signed record keeps
        # neither threads nor tasks for it.
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="signatures")
        self._wakeup = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Stop the workers and the pool; batches still queued are not committed (a 503, or a
        frame error with `retry_after_ms`: the device sends them again)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(StoreUnavailable("the service is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, self._tasks = None, []

    def _take(self) -> list[_Request]:
        taken: list[_Request] = []
        records = 0
        while self._queue and (not taken or records + len(self._queue[0].jobs) <= JOB_RECORDS):
            request = self._queue.popleft()
            if request.future.done():
                continue  # its batch was abandoned (the connection went away)
            taken.append(request)
            records += len(request.jobs)
        return taken

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            taken = self._take()
            if not taken:
                continue
            jobs = [job for request in taken for job in request.jobs]
            try:
                errors = await loop.run_in_executor(self._pool, _verify_all, jobs)
            except Exception as exc:  # a bug in verifying: those batches get no ack
                for request in taken:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            start = 0
            for request in taken:
                end = start + len(request.jobs)
                if not request.future.done():
                    request.future.set_result(errors[start:end])
                start = end


def _any_signed(write: BatchWrite) -> bool:
    return any(isinstance(item, Record) and item.v != 1 for item, _ in write.judged)


def _refused(detail: str) -> Verdict:
    return reject(BAD_SIGNATURE, detail)
