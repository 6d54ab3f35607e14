"""The real-time stream: one WebSocket per device, several frames in flight.

Each frame is handled in its own task so that frames pipeline; acks go out as
their commits finish, each carrying the id it answers. A bound on frames in
flight gives backpressure: past it, the connection stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from playproof.errors import Forbidden, StoreUnavailable, TooLarge, Unauthenticated
from playproof.protocol import MAX_BATCH_BYTES, StreamError, encode
from playproof.server.auth import Authenticator
from playproof.server.ingest import Ingestor
from playproof.stores.base import DeviceInfo

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN = 1013
MAX_IN_FLIGHT = 64
# A frame is an envelope of at most 1 MiB plus its id and some slack.
MAX_FRAME_BYTES = MAX_BATCH_BYTES + 4096


class StreamSession:
    """One device's stream connection."""

    def __init__(self, ws: WebSocket, ingestor: Ingestor, device: DeviceInfo) -> None:
        self._ws = ws
        self._ingestor = ingestor
        self._device = device
        self._send_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = True

    async def run(self) -> None:
        """Read frames until the device goes away, then let in-flight frames finish."""
        try:
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self._slots.acquire()
                task = asyncio.create_task(self._answer(message))
                self._tasks.add(task)
                task.add_done_callback(self._done)
        except WebSocketDisconnect:
            pass
        finally:
            self._open = False
            # Commits already queued still complete (the device will get
            # `duplicate` when it resends); only the acks have no one to go to.
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _answer(self, message: Mapping[str, Any]) -> None:
        reply = await self._reply(message)
        if reply is not None:
            await self._send(reply)

    async def _reply(self, message: Mapping[str, Any]) -> bytes | None:
        text = message.get("text")
        if not isinstance(text, str):
            return encode(StreamError(None, "expected a text frame holding JSON, got binary"))
        data = text.encode()
        if len(data) > MAX_FRAME_BYTES:
            error = TooLarge(
                f"expected a frame of at most {MAX_FRAME_BYTES} bytes, got {len(data)}"
            )
            return encode(StreamError(None, str(error)))
        return await self._ingestor.stream_frame(data, self._device)

    async def _send(self, reply: bytes) -> None:
        if not self._open:
            return
        async with self._send_lock:
            try:
                await self._ws.send_text(reply.decode())
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                self._open = False
                log.debug("ack not delivered, device will resend: %s", exc)


async def serve_stream(ws: WebSocket, auth: Authenticator, ingestor: Ingestor) -> None:
    """Accept, authenticate (closing 4401 or 4403), then run the session."""
    await ws.accept()
    try:
        device = await auth.device(ws.headers.get("authorization"))
    except Unauthenticated:
        await ws.close(CLOSE_UNAUTHENTICATED, "missing or unknown token")
        return
    except Forbidden:
        await ws.close(CLOSE_FORBIDDEN, "token revoked")
        return
    except StoreUnavailable:
        await ws.close(CLOSE_TRY_AGAIN, "store unavailable, try again later")
        return
    gauge = ingestor.metrics.connections
    gauge.inc()
    try:
        await StreamSession(ws, ingestor, device).run()
    finally:
        gauge.dec()
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close()
