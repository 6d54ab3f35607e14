"""An HTTP-aware proxy on loopback that can refuse WebSocket upgrades, as some networks do.

A shop's firewall or corporate proxy often lets plain HTTP through and answers a
WebSocket upgrade with `403 Forbidden`. This proxy reads each request's head: an
upgrade (`Upgrade: websocket`) is answered 403 while `refusing` is set, or passed on
and then forwarded byte for byte both ways; every other request is passed on as it
came (keep-alive connections included: bodies are framed by `Content-Length`), and
the answers flow back untouched.

`requests` counts requests by `METHOD /path`, `refused` and `upgraded` the upgrades
turned away and let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Final

FORBIDDEN_BODY: Final = b"WebSockets are not allowed on this network\n"
FORBIDDEN: Final = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(FORBIDDEN_BODY), FORBIDDEN_BODY)
)
CHUNK: Final = 65536
HEAD_LIMIT: Final = 64 * 1024


class UpgradeProxy:
    """A proxy to `upstream` on a free loopback port, on its own thread; refusing at first."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.refusing = True
        self.refused = 0
        self.upgraded = 0
        self.requests: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> UpgradeProxy:
        """Listen and start proxying."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def allow(self) -> None:
        """Let WebSocket upgrades through from now on."""
        self.refusing = False

    def stop(self) -> None:
        """Close every connection and stop the thread."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> UpgradeProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=HEAD_LIMIT)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self.upstream)
        try:
            await self._serve(reader, writer, link)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a connection closed (or spoke something else): end it
        except asyncio.CancelledError:
            pass  # `stop`: end quietly
        finally:
            await link.close()
            _close(writer)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Request by request until the client closes, or an upgrade takes the connection."""
        while head := await _read_head(reader):
            line, headers = _parse(head)
            self.requests[line] += 1
            if headers.get("upgrade", "").lower() == "websocket":
                if self.refusing:
                    self.refused += 1
                    writer.write(FORBIDDEN)
                    await writer.drain()
                    return
                self.upgraded += 1
                await link.send(head, writer)
                await _pipe(reader, link.writer())  # the socket is the WebSocket's now
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise ValueError("chunked request bodies are not proxied")
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            await link.send(head + body, writer)


class _Link:
    """The upstream side of one client connection, opened at its first request."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._writer: asyncio.StreamWriter | None = None
        self._answers: asyncio.Task[None] | None = None

    async def send(self, data: bytes, client: asyncio.StreamWriter) -> None:
        """Forward `data` upstream; the first time, connect and start returning answers."""
        if self._writer is None:
            reader, self._writer = await asyncio.open_connection(*self.upstream)
            self._answers = asyncio.create_task(_pipe(reader, client))
        self._writer.write(data)
        await self._writer.drain()

    def writer(self) -> asyncio.StreamWriter:
        """The upstream connection (after a `send`)."""
        assert self._writer is not None
        return self._writer

    async def close(self) -> None:
        """Close the upstream connection and stop returning answers."""
        if self._writer is not None:
            _close(self._writer)
        if self._answers is not None:
            self._answers.cancel()
            await asyncio.gather(self._answers, return_exceptions=True)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The next request's head, through its blank line; b"" when the client closed."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return b""


def _parse(head: bytes) -> tuple[str, dict[str, str]]:
    """`METHOD /path` and the headers (names lowercased) of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return f"{method} {target.partition('?')[0]}", headers


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy bytes from `src` to `dst` until `src` ends, then close `dst`."""
    with contextlib.suppress(OSError, ConnectionError):
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    _close(dst)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
