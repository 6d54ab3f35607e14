"""The real-time stream: one WebSocket per device, several frames in flight.

Each frame is handled in its own task so that frames pipeline; acks go out as
their commits finish, each carrying the id it answers. A bound on frames in
flight gives backpressure: past it, the connection stops reading.

A connection is the unit of scale (10,000 screens each sending a frame every few
seconds), so what it holds while idle is kept small: one task (the reader), an idle
timer handle rather than a watchdog task, a counter rather than a semaphore, and no
send lock (issue 17: the garbage collector's pauses grow with the objects held).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from starlette.types import Receive, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from playproof.errors import (
    Forbidden,
    Overloaded,
    RateLimited,
    StoreUnavailable,
    TooLarge,
    Unauthenticated,
)
from playproof.protocol import MAX_BATCH_BYTES, StreamError, encode, frame_head
from playproof.server.auth import bearer_token, hash_token
from playproof.server.ingest import send_again
from playproof.server.service import Service
from playproof.stores.base import DeviceInfo

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN = 1013
CLOSE_GOING_AWAY = 1001
MAX_IN_FLIGHT = 64
# The longest a connection refused frame after frame is left unread, before the random
# spread of up to half as long again (hold_back_s): 45 s, under the default stream_idle_s.
MAX_QUIET_S = 30.0
# A frame is an envelope of at most 1 MiB plus its id and some slack.
MAX_FRAME_BYTES = MAX_BATCH_BYTES + 4096


def hold_back_s(
    retry_after_s: float, strikes: int, draw: Callable[[float, float], float] = random.uniform
) -> float:
    """How long a connection is left unread after a refusal, `strikes` before it in a row.

    A device told to wait is not read for that long, twice as long at each refusal in a
    row (a screen's SDK reconnects after one): a flood's frames then wait in its socket
    rather than in the service's memory, and cost it no CPU. Up to half as long again at
    random: connections refused together would otherwise all be read again together, a
    burst of their queued frames that held every other request 200-550 ms
    (bench/hostile.py --scenario flood).
    """
    return min(MAX_QUIET_S, retry_after_s * 2.0**strikes) * draw(1.0, 1.5)


class StreamSession:
    """One device's stream connection."""

    def __init__(
        self,
        ws: WebSocket,
        service: Service,
        device: DeviceInfo,
        token_hash: str,
        asgi: tuple[Receive, Send],
    ) -> None:
        self._ws = ws
        # The server's own receive and send, for the frames (app.StreamApp).
        self._receive, self._send_message = asgi
        self._auth = service.auth
        self._token_hash = token_hash
        self._ingestor = service.ingestor
        self._rate = service.rate
        self._bytes_rate = service.bytes_rate
        self._backlog = service.backlog
        self._quiet_until = 0.0
        self._strikes = 0
        self._idle_s = service.limits.stream_idle_s
        self._last_frame = time.monotonic()
        self._device = device
        self._in_flight = 0
        # Set only while the reader waits for room (MAX_IN_FLIGHT frames unanswered).
        self._room: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = True
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Read frames until the device goes away, then let in-flight frames finish."""
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._idle_s, self._check_idle)
        receive = self._receive
        try:
            while True:
                if self._quiet_until:
                    await self._hold_off()
                message = await receive()
                self._last_frame = time.monotonic()
                if message["type"] == "websocket.disconnect":
                    break
                if self._in_flight >= MAX_IN_FLIGHT:
                    self._room = asyncio.Event()
                    await self._room.wait()
                # The task holds the frame's text; an idle connection keeps none of it.
                task = loop.create_task(self._answer(message.get("text")))
                del message
                self._in_flight += 1
                self._tasks.add(task)
                task.add_done_callback(self._done)
        except WebSocketDisconnect:
            pass
        finally:
            self._idle_timer.cancel()
            self._open = False
            # Commits already queued still complete (the device will get
            # `duplicate` when it resends); only the acks have no one to go to.
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._closing is not None:
                await self._closing

    def _check_idle(self) -> None:
        # One timer per connection, moved on only when it fires, rather than a task or
        # a timeout around every receive.
        idle = time.monotonic() - self._last_frame
        if idle < self._idle_s:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self._idle_s - idle, self._check_idle)
        elif self._open:
            self._closing = asyncio.create_task(
                self._close(CLOSE_GOING_AWAY, "idle: no frame for too long")
            )

    def _hold_back(self, retry_after_s: float) -> None:
        quiet = hold_back_s(retry_after_s, self._strikes)
        self._strikes = min(self._strikes + 1, 16)
        self._quiet_until = max(self._quiet_until, time.monotonic() + quiet)

    async def _hold_off(self) -> None:
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            self._quiet_until = 0.0

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._room is not None:
            self._room.set()
            self._room = None

    async def _answer(self, text: str | None) -> None:
        # Handed over in a box: `_reply` drops the text once it is encoded, so that a frame
        # waiting for its commit is held once, not also by this frame's argument.
        box = [text]
        del text
        reply = await self._reply(box)
        if reply is not None:
            await self._send(reply)

    async def _reply(self, box: list[str | None]) -> bytes | None:
        text = box.pop()
        if not isinstance(text, str):
            return encode(StreamError(None, "expected a text frame holding JSON, got binary"))
        if not await self._still_authorized(text):
            return None
        try:
            self._rate.check(self._device.device_id)
            self._bytes_rate.check(self._device.device_id, len(text))
            # Before encoding and decoding: a refused frame costs no more work.
            self._backlog.check(self._device.device_id, 0, len(text))
        except (RateLimited, Overloaded) as exc:
            self._hold_back(exc.retry_after_s)
            frame_id, _ = frame_head(text)
            return send_again(frame_id, exc)
        self._strikes = 0
        body = text.encode()
        del text
        if len(body) > MAX_FRAME_BYTES:
            error = TooLarge(
                f"expected a frame of at most {MAX_FRAME_BYTES} bytes, got {len(body)}"
            )
            return encode(StreamError(None, str(error)))
        return await self._ingestor.stream_frame(body, self._device)

    async def _still_authorized(self, text: str) -> bool:
        # The token is checked again on every frame (a cache hit, mostly), so
        # that a revocation or rotation made after the connection opened stops
        # it within the cache time rather than when the device reconnects.
        if not self._open:
            return False
        try:
            self._device = await self._auth.device_by_hash(self._token_hash)
        except Unauthenticated:
            await self._close(CLOSE_UNAUTHENTICATED, "token no longer valid (rotated)")
            return False
        except Forbidden:
            await self._close(CLOSE_FORBIDDEN, "token revoked")
            return False
        except StoreUnavailable as exc:
            frame_id, _ = frame_head(text)
            await self._send(send_again(frame_id, exc))
            return False
        return True

    async def _close(self, code: int, reason: str) -> None:
        self._open = False
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await self._ws.close(code, reason)

    async def _send(self, reply: bytes) -> None:
        if not self._open:
            return
        # No lock: an ASGI server writes each message whole, and answers may go in any
        # order (each carries its frame's id).
        try:
            await self._send_message({"type": "websocket.send", "text": reply.decode()})
        except (RuntimeError, OSError) as exc:  # the server's ClientDisconnected is an OSError
            self._open = False
            log.debug("ack not delivered, device will resend: %s", exc)


async def serve_stream(ws: WebSocket, service: Service, receive: Receive, send: Send) -> None:
    """Accept, authenticate (closing 4401 or 4403), admit, then run the session on the
    server's own `receive` and `send` (those `ws` was made with)."""
    await ws.accept()
    try:
        with service.guard.watch(service.guard.client(ws)) as before_lookup:
            token_hash = hash_token(bearer_token(ws.headers.get("authorization")))
            device = await service.auth.device_by_hash(token_hash, before_lookup)
    except RateLimited as exc:
        await ws.close(CLOSE_TRY_AGAIN, str(exc)[:120])
        return
    except Unauthenticated:
        await ws.close(CLOSE_UNAUTHENTICATED, "missing or unknown token")
        return
    except Forbidden:
        await ws.close(CLOSE_FORBIDDEN, "token revoked")
        return
    except StoreUnavailable:
        await ws.close(CLOSE_TRY_AGAIN, "store unavailable, try again later")
        return
    refused = service.connections.acquire(device.device_id)
    if refused is not None:
        await ws.close(CLOSE_TRY_AGAIN, refused[:120])
        return
    gauge = service.metrics.connections
    gauge.inc()
    try:
        await StreamSession(ws, service, device, token_hash, (receive, send)).run()
    finally:
        gauge.dec()
        service.connections.release(device.device_id)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close()
