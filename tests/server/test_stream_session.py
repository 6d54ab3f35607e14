"""The stream session's own bookkeeping (issue 17 replaced its semaphore, watchdog task and
send lock): at most MAX_IN_FLIGHT frames are taken in before their answers, every frame is
answered once, and an idle connection is closed by its timer.

The WebSocket and the service are fakes: what is asserted is what the session reads,
answers and closes, counted, never timed.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from playproof.server.service import Service
from playproof.server.stream import CLOSE_GOING_AWAY, MAX_IN_FLIGHT, StreamSession
from playproof.stores.base import DeviceInfo

DEVICE = DeviceInfo("scr-session", "store-1", 0, None)


class FakeWebSocket:
    """Frames to hand out, then a disconnect once `hang_up` is set; answers recorded
    (`receive` and `send` stand for the server's own, `close` for Starlette's)."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames
        self.read = 0
        self.sent: list[str] = []
        self.closed: list[int] = []
        self.hang_up = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.read < len(self.frames):
            self.read += 1
            return {"type": "websocket.receive", "text": self.frames[self.read - 1]}
        await self.hang_up.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message["text"])

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed.append(code)
        self.hang_up.set()


class HeldIngestor:
    """Answers a frame with its own text once `release` is set: commits held meanwhile."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.frames = 0

    async def stream_frame(self, text: bytes, device: DeviceInfo) -> bytes:
        self.frames += 1
        await self.release.wait()
        return text


def fake_service(ingestor: HeldIngestor, idle_s: float = 300.0) -> Service:
    async def device_by_hash(token_hash: str) -> DeviceInfo:
        return DEVICE

    service = SimpleNamespace(
        auth=SimpleNamespace(device_by_hash=device_by_hash),
        ingestor=ingestor,
        rate=SimpleNamespace(check=lambda device_id: None),
        backlog=SimpleNamespace(check=lambda device_id, records, nbytes: None),
        limits=SimpleNamespace(stream_idle_s=idle_s),
    )
    return cast(Service, service)


async def test_at_most_max_in_flight_frames_are_read_before_answers_and_each_is_answered_once() -> (
    None
):
    frames = [f'{{"id":{i}}}' for i in range(1, 2 * MAX_IN_FLIGHT + 11)]
    ws = FakeWebSocket(frames)
    ingestor = HeldIngestor()
    session = StreamSession(
        cast(Any, ws), fake_service(ingestor), DEVICE, "hash", (ws.receive, cast(Any, ws.send))
    )
    run = asyncio.create_task(session.run())
    for _ in range(50):
        await asyncio.sleep(0)
    # One frame past the bound has been read; its task waits for room.
    assert ingestor.frames == MAX_IN_FLIGHT
    assert ws.read == MAX_IN_FLIGHT + 1
    assert ws.sent == []
    ingestor.release.set()
    while len(ws.sent) < len(frames):
        await asyncio.sleep(0.01)
    ws.hang_up.set()
    await run
    assert sorted(ws.sent) == sorted(frames), "every frame answered exactly once"
    assert ingestor.frames == len(frames)


async def test_an_idle_session_is_closed_by_its_timer() -> None:
    ws = FakeWebSocket(['{"id":1}'])
    ingestor = HeldIngestor()
    ingestor.release.set()
    service = fake_service(ingestor, idle_s=0.2)
    asgi = (ws.receive, cast(Any, ws.send))
    session = StreamSession(cast(Any, ws), service, DEVICE, "hash", asgi)
    await asyncio.wait_for(session.run(), 30)
    assert ws.sent == ['{"id":1}']
    assert ws.closed == [CLOSE_GOING_AWAY]
