"""A TCP fault proxy on loopback, between devices and the service.

Modes, switchable while traffic flows:
- `pass`: forward both ways.
- `drop`: refuse new connections (accept and close at once) and close open ones.
- `stall`: accept and forward nothing either way (a black hole).
- `reset`: forward part of the next client chunk, then reset the connection (RST).
- `reset_mid_frame`: let each connection's opening exchange through (the HTTP request
  or WebSocket upgrade, and its answer), then forward half of the next chunk either way
  and reset: a WebSocket frame (or a keep-alive request, or an ack) cut in the middle.
- `trickle`: forward in small pieces with pauses (a slow, lossy-feeling link).
- `cut_before_ack`: forward requests, then close before any answer reaches the client:
  the service commits, the device never hears, and must resend.

`bitten` counts, per mode, the times the fault acted on traffic (a connection refused,
closed or reset, a chunk swallowed, trickled or cut), so that a scenario can tell a
fault that bit from one that found no traffic; `bitten_on` counts the chunks a fault
swallowed, trickled or cut by (mode, the request line their connection opened with);
`requests` counts connections by that request line (`GET /v1/stream`,
`POST /v1/impressions/batch`, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from typing import Final

MODES: Final = ("pass", "drop", "stall", "reset", "reset_mid_frame", "trickle", "cut_before_ack")
CHUNK = 65536


class FaultProxy:
    """A proxy to `upstream` on a free loopback port, running on its own thread."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.port = 0
        self.connections = 0
        self.bitten: Counter[str] = Counter()
        self.bitten_on: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        """Listen and start forwarding."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(10)
        return self

    def set_mode(self, mode: str) -> None:
        """Switch the fault; `drop` also closes every open connection."""
        if mode not in MODES:
            raise ValueError(f"expected one of {MODES}, got {mode!r}")
        self.mode = mode
        if mode in ("drop", "reset"):
            self._loop.call_soon_threadsafe(self._close_all, mode == "reset", mode)

    def stop(self) -> None:
        """Close everything and stop the thread."""

        async def shutdown() -> None:
            self._close_all(reset=False)
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _close_all(self, reset: bool, fault: str | None = None) -> None:
        if fault is not None:
            # Both ends of a connection are in the set: count connections, not writers.
            self.bitten[fault] += len(self._writers) // 2
        for writer in list(self._writers):
            _abort(writer, reset)
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "drop":
            self.bitten["drop"] += 1
            _abort(writer, reset=False)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer, reset=True)
            return
        self._writers.update((writer, up_writer))
        link = _Link()
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, link, upstream=True),
                self._pipe(up_reader, writer, link, upstream=False),
            )
        except asyncio.CancelledError:
            pass  # `stop`: end quietly (a cancelled handler makes asyncio log a traceback)
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                _abort(w, reset=False)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link, upstream: bool
    ) -> None:
        chunks = 0
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while data := await src.read(CHUNK):
                if upstream and chunks == 0:
                    link.request = _request_line(data)
                    self.requests[link.request] += 1
                chunks += 1
                if not await self._forward(data, dst, link, upstream, opening=chunks == 1):
                    return
        with contextlib.suppress(OSError, RuntimeError):
            dst.close()

    async def _forward(
        self,
        data: bytes,
        dst: asyncio.StreamWriter,
        link: _Link,
        upstream: bool,
        opening: bool = False,
    ) -> bool:
        mode = self.mode
        if mode == "stall":
            self._bite(mode, link)
            await asyncio.sleep(3600)
            return False
        if mode == "reset" or (mode == "reset_mid_frame" and not opening):
            self._bite(mode, link)
            dst.write(data[: len(data) // 2])
            _abort(dst, reset=True)
            return False
        if mode == "cut_before_ack" and not upstream:
            self._bite(mode, link)
            _abort(dst, reset=True)
            return False
        if mode == "trickle":
            self._bite(mode, link)
            for i in range(0, len(data), 512):
                dst.write(data[i : i + 512])
                await asyncio.sleep(0.01)
        else:
            dst.write(data)
        await dst.drain()
        return True

    def _bite(self, mode: str, link: _Link) -> None:
        self.bitten[mode] += 1
        self.bitten_on[(mode, link.request)] += 1


class _Link:
    """One proxied connection: the request line it opened with (`?` until known)."""

    __slots__ = ("request",)

    def __init__(self) -> None:
        self.request = "?"


def _request_line(data: bytes) -> str:
    """`METHOD /path` of an HTTP request's first line, or `?` when it is not one."""
    method, _, rest = data.partition(b"\r\n")[0].partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if not method.isalpha() or not path.startswith(b"/"):
        return "?"
    return f"{method.decode()} {path.decode(errors='replace')}"


def _abort(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Close a connection; with `reset`, with an RST instead of a FIN."""
    with contextlib.suppress(OSError, RuntimeError):
        sock = writer.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort() if reset else writer.close()
