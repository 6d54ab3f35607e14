"""The real-time stream: one WebSocket per device, several frames in flight, acks by id.

A session opens with an empty frame (a probe): its ack proves the credentials
and measures the service clock before any record is risked. Then frames of up
to 1000 records / 1 MiB go out oldest first while at most `frames_in_flight`
wait for their acks; each ack is matched to its frame by id. A frame without
an ack within `ack_timeout_s` ends the session: everything not acked is sent
again on the next one, and the service answers `duplicate` for what it had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final, NamedTuple

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from playproof.device.backoff import wait_event
from playproof.device.journal import Pending, look_back
from playproof.device.transport import (
    BadCredentials,
    Refused,
    RetryLater,
    TransportDown,
    envelope,
    reply_decoder,
)
from playproof.errors import DeviceError

if TYPE_CHECKING:
    from playproof.device.uplink import Uplink

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_TRY_AGAIN: Final = 1013
# With nothing to send, look at the journal again this often (records held back
# because they end in the future of the corrected clock become sendable by time).
IDLE_POLL_S: Final = 5.0
# When none was held back, only a new record (which notifies) can be sent: look
# again this rarely, as a safety net. Thousands of devices in one simulator
# otherwise spend most of their idle time reading empty journals.
IDLE_SAFETY_S: Final = 60.0


class Frame(NamedTuple):
    """A frame in flight: its sequences, when it left on the device clock and in real time."""

    seqs: tuple[int, ...]
    sent_mono: float
    sent_real: float


class StreamSession:
    """One connection's life: send frames, match acks, end by raising what went wrong."""

    def __init__(self, uplink: Uplink, ws: ClientConnection) -> None:
        self._up = uplink
        self._ws = ws
        self._frames: dict[int, Frame] = {}
        self._slots = asyncio.Semaphore(uplink.config.frames_in_flight)
        self._cursor = 0
        self._next_id = 1
        self._probed = asyncio.Event()
        self._caught_up = False

    async def run(self) -> None:
        """Run until the connection fails; always ends by raising a transport error."""
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._read_loop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise translate(exc) from exc
        raise TransportDown("stream ended")

    async def send_status(self, body: bytes) -> None:
        """Send a status frame (the service does not answer it)."""
        try:
            await self._ws.send(body, text=True)
        except (ConnectionClosed, OSError) as exc:
            raise translate(exc) from exc

    def abort(self) -> None:
        """Drop the connection at once, as a dead network would (simulation)."""
        self._ws.transport.abort()

    @property
    def established(self) -> bool:
        """Whether the service acknowledged the opening probe: the stream was really up."""
        return self._probed.is_set()

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return len(self._frames)

    # --- sending ------------------------------------------------------------

    async def _send_loop(self) -> None:
        await self._slots.acquire()
        await self._send_frame([])
        await self._probed.wait()
        while True:
            self._up.check_skew()
            await self._slots.acquire()
            rows = await self._next_rows()
            await self._send_frame(rows)

    async def _next_rows(self) -> list[Pending]:
        config, journal = self._up.config, self._up.journal
        if self._caught_up:
            # The last read took every sealed record: only a new one (a notify) adds more.
            self._caught_up = False
            await wait_event(self._up.ready, self._idle_s())
        while True:
            self._up.ready.clear()
            self._cursor = look_back(journal, self._cursor)
            in_flight = {seq for frame in self._frames.values() for seq in frame.seqs}
            rows = await journal.pending(
                self._cursor,
                config.batch_records,
                config.batch_bytes,
                self._up.until_ts(),
                skip=in_flight,
            )
            if rows:
                self._caught_up = journal.caught_up
                return rows
            await wait_event(self._up.ready, self._idle_s())

    def _idle_s(self) -> float:
        return IDLE_POLL_S if self._up.journal.held_back else IDLE_SAFETY_S

    async def _send_frame(self, rows: list[Pending]) -> None:
        frame_id = self._next_id
        self._next_id += 1
        body = envelope(self._up.device_id, self._up.clock.now_ms(), rows, frame_id)
        seqs = tuple(r.seq for r in rows)
        self._frames[frame_id] = Frame(seqs, self._up.clock.monotonic(), time.monotonic())
        if rows:
            self._cursor = rows[-1].seq
        await self._ws.send(body, text=True)

    # --- reading ------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self._ws.recv(), self._patience())
            except TimeoutError:
                self._check_overdue()
                continue
            await self._on_reply(message)

    def _patience(self) -> float | None:
        if not self._frames:
            return None
        oldest = min(f.sent_real for f in self._frames.values())
        return max(0.05, oldest + self._up.config.ack_timeout_s - time.monotonic())

    def _check_overdue(self) -> None:
        limit = time.monotonic() - self._up.config.ack_timeout_s
        late = [fid for fid, f in self._frames.items() if f.sent_real <= limit]
        if late:
            raise TransportDown(
                f"stream: no ack for frame {late[0]} within {self._up.config.ack_timeout_s:g} s"
            )

    async def _on_reply(self, message: str | bytes) -> None:
        try:
            reply = reply_decoder.decode(message)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TransportDown(f"stream: the service sent an unreadable frame: {exc}") from None
        frame = self._frames.pop(reply.id, None) if reply.id is not None else None
        if frame is not None:
            self._slots.release()
            if frame.seqs and self._up.on_round_trip is not None:
                self._up.on_round_trip(time.monotonic() - frame.sent_real)
        if reply.error is not None:
            raise refusal(reply.error, reply.retry_after_ms)
        if frame is None or reply.received_at is None:
            log.warning("stream: an answer for no frame in flight (id %s), ignored", reply.id)
            return
        await self._up.take_acks(
            reply.acks, frame.seqs, reply.received_at, reply.skew_ms, frame.sent_mono, "stream"
        )
        self._probed.set()


def refusal(error: str, retry_after_ms: int | None) -> DeviceError:
    """An error answer: send again after `retry_after_ms` when it says so, else refused."""
    if retry_after_ms is not None:
        return RetryLater(f"stream: {error}", max(0, retry_after_ms) / 1000)
    # Without it the frame itself is wrong (PROTOCOL.md section 3), whatever the words
    # say: an older service's "not committed" is resent too, after the refused backoff.
    return Refused(f"stream: frame refused: {error}")


def translate(exc: BaseException) -> BaseException:
    """Our failure kind for an exception out of a stream connection."""
    if isinstance(exc, DeviceError):
        return exc
    if isinstance(exc, ConnectionClosed):
        return closed(exc)
    if isinstance(exc, OSError | WebSocketException | TimeoutError):
        return TransportDown(f"stream: {str(exc) or type(exc).__name__}")
    return exc


def closed(exc: ConnectionClosed) -> DeviceError:
    """What a close frame means: bad credentials, try later, or a plain network failure."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    if code == CLOSE_UNAUTHENTICATED:
        return BadCredentials(f"stream closed {code}: missing or unknown token ({reason})")
    if code == CLOSE_FORBIDDEN:
        return BadCredentials(f"stream closed {code}: token revoked ({reason})")
    if code == CLOSE_TRY_AGAIN:
        return RetryLater(f"stream closed {code}: {reason}", 1.0)
    return TransportDown(f"stream closed: {exc}")
