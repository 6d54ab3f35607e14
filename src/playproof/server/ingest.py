"""The one ingest pipeline: decode → verify checksum → rules → signatures → dedupe → commit → ack.

Both transports feed it: the HTTP batch route with a body, the stream with a
frame. Authentication has happened before (the transport knows its caller);
signatures are checked off the event loop (server/signatures.py); dedupe and
commit happen in the store, through the group committer, and an ack leaves
only after its records are durably committed.

PROTOCOL.md's order (decode, bad_checksum, forbidden, duplicate, bad_signature,
conflict, the remaining invalid checks, clock rules) comes out of three steps:
the rules judge every record first; a `bad_signature` then overrides every
verdict but undecodable, bad_checksum and forbidden; the store's planner answers
`duplicate` before it looks at any of them (stores/base.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from playproof import protocol
from playproof.config import Limits
from playproof.errors import EnvelopeError, Forbidden, PlayproofError, ProtocolError
from playproof.protocol import AckMessage, Batch, Record, StreamAck, StreamError
from playproof.rules import DEFAULT_POLICY, Context, Judge, Policy, judge_item
from playproof.server.backlog import Backlog
from playproof.server.committer import GroupCommitter
from playproof.server.metrics import Metrics
from playproof.server.signatures import SignatureChecker
from playproof.stores.base import BatchWrite, DeviceInfo, Judged, Store
from playproof.stores.draft import with_draft

Clock = Callable[[], int]
# How long a device waits before resending a frame the service could not commit, when
# the failure does not say (a store outage).
RETRY_AFTER_S = 1.0


def wall_clock_ms() -> int:
    """The service clock: UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000


class Ingestor:
    """Judges batches for an authenticated device and commits them through one committer."""

    def __init__(
        self,
        store: Store,
        committer: GroupCommitter,
        policy: Policy = DEFAULT_POLICY,
        clock: Clock = wall_clock_ms,
        metrics: Metrics | None = None,
        backlog: Backlog | None = None,
        signatures: SignatureChecker | None = None,
    ) -> None:
        self.store = store
        self.committer = committer
        self.policy = policy
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.backlog = backlog or Backlog(Limits().backlog_records, Limits().backlog_bytes)
        self.signatures = signatures or SignatureChecker(metrics=self.metrics)

    def judge(self, batch: Batch, device: DeviceInfo, received_at: int) -> BatchWrite:
        """Verify checksums and apply the rules to every item of a batch from `device`
        (the signatures come after, in `ingest`: they are checked off the event loop)."""
        if batch.device_id != device.device_id:
            raise Forbidden(
                f"envelope is for device {batch.device_id!r}, "
                f"but the token belongs to {device.device_id!r}"
            )
        rules = Judge(
            Context(device.device_id, device.store_id, batch.sent_at, received_at), self.policy
        )
        judged = [Judged(item, judge_item(item, rules)) for item in batch.items]
        return BatchWrite(device.device_id, batch.sent_at, received_at, judged)

    async def ingest(
        self,
        batch: Batch,
        device: DeviceInfo,
        received_at: int,
        transport: str = "http",
        size: int = 0,
    ) -> AckMessage:
        """Judge and commit a decoded batch (`size` bytes read); the acks once it is durable.

        Overloaded, before anything is committed, when the backlog cannot take it.
        """
        started = time.perf_counter()
        acks: list[protocol.Ack] = []
        write = self.judge(batch, device, received_at)
        if write.judged:
            # Held while the signatures are verified too: that is work queued as well.
            held = (device.device_id, len(write.judged), size)
            self.backlog.take(*held)
            try:
                if self.signatures.needed(write, device):
                    device = await self._with_fresh_keys(write, device)
                    write = await self.signatures.apply(write, device)
                # Planned here, on the event loop, so the store's single writer need not.
                acks = await self.committer.commit(with_draft(write))
            finally:
                self.backlog.release(*held)
        self.metrics.answered(acks, transport, time.perf_counter() - started)
        return AckMessage(received_at, write.skew_ms, acks)

    async def _with_fresh_keys(self, write: BatchWrite, device: DeviceInfo) -> DeviceInfo:
        """The device with its keys read afresh when a record names a key it does not hold.

        Authentication caches a device for 2 s, and a key registered on another service
        node (or with the CLI) in that time would otherwise be refused `bad_signature`,
        and the device would drop a good record. The device's rate limit bounds the reads.
        """
        held = {key.key_id for key in device.keys}
        if all(
            not isinstance(item, Record) or item.v == 1 or item.key_id in held
            for item, _ in write.judged
        ):
            return device
        fresh = await self.store.get_device(device.device_id)
        if fresh is None:
            return device
        return device._replace(keys=fresh.keys, signatures_required=fresh.signatures_required)

    async def http_batch(self, body: bytes, device: DeviceInfo) -> AckMessage:
        """The HTTP batch route's work: decode the body, then ingest it."""
        received_at = self.clock()
        # Before decoding: a full backlog costs a refused body no more work.
        self.backlog.check(device.device_id, 0, len(body))
        batch = protocol.decode_batch(body)
        return await self.ingest(batch, device, received_at, size=len(body))

    async def stream_frame(self, text: bytes, device: DeviceInfo) -> bytes | None:
        """Answer one stream frame: an ack, an error, or None for a status frame."""
        received_at = self.clock()
        frame_id, is_status = protocol.frame_head(text)
        try:
            if is_status:
                await self.status(text, device, received_at)
                return None
            # The backlog was checked before the frame was encoded (stream.py).
            batch = protocol.decode_stream_batch(text)
            ack = await self.ingest(batch, device, received_at, "stream", len(text))
        except (ProtocolError, Forbidden) as exc:
            self.metrics.rejected_requests.labels("frame_error").inc()
            return protocol.encode(StreamError(frame_id, str(exc)))
        except PlayproofError as exc:
            self.metrics.rejected_requests.labels("frame_unavailable").inc()
            return send_again(frame_id, exc)
        return protocol.encode(
            StreamAck(batch.frame_id or 0, ack.received_at, ack.skew_ms, ack.acks)
        )

    async def status(self, body: bytes, device: DeviceInfo, received_at: int) -> None:
        """Store a status message from `device` as its latest health."""
        status = protocol.decode_status(body)
        if status.device_id != device.device_id:
            raise Forbidden(
                f"status is for device {status.device_id!r}, "
                f"but the token belongs to {device.device_id!r}"
            )
        await self.store.save_status(status, received_at)
        self.metrics.status(status)


def send_again(frame_id: int | None, exc: Exception) -> bytes:
    """The stream's answer to a frame not committed now: resend it after `retry_after_ms`.

    The wait is the error's own (a rate limit, an overload), else RETRY_AFTER_S.
    """
    after_s = getattr(exc, "retry_after_s", RETRY_AFTER_S)
    return protocol.encode(
        StreamError(frame_id, f"not committed, send again: {exc}", math.ceil(after_s * 1000))
    )


def ensure_bytes(text: str | bytes) -> bytes:
    """Frame text as bytes; a frame that is not UTF-8 text is an envelope error."""
    if isinstance(text, bytes):
        raise EnvelopeError("expected a text frame holding JSON, got a binary frame")
    return text.encode()
