"""Running the service under uvicorn, on a socket we bind ourselves so port 0 works."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Generator
from typing import NamedTuple

import uvicorn
import uvloop

from playproof.errors import ConfigError
from playproof.protocol import MAX_BATCH_BYTES
from playproof.server.app import create_app, create_metrics_app
from playproof.server.service import Service
from playproof.server.stream import MAX_FRAME_BYTES

log = logging.getLogger("playproof")


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def uvicorn_config(service: Service, log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings tuned for many long-lived device connections."""
    return uvicorn.Config(
        create_app(service),
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=max(MAX_FRAME_BYTES, MAX_BATCH_BYTES) + 1024,
        ws_per_message_deflate=False,
        # The peer's address is the client's: X-Forwarded-For is read by the service
        # itself, and only from its configured trusted proxies (server/guard.py).
        proxy_headers=False,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
    )


class _Companion(uvicorn.Server):
    """A second server on the main one's loop: the main one alone takes SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave the signals to the main server (which stops this one when it stops)."""
        yield


def metrics_config(service: Service, log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings of the `--metrics-listen` address; the main app runs the lifespan."""
    return uvicorn.Config(
        create_metrics_app(service),
        http="httptools",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=1,
    )


class _Listener(NamedTuple):
    server: uvicorn.Server
    sock: socket.socket
    url: str


def _listener(server: uvicorn.Server, host: str, port: int) -> _Listener:
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    shown = f"[{host}]" if ":" in host else host
    return _Listener(server, sock, f"http://{shown}:{sock.getsockname()[1]}")


async def _announce(listeners: list[_Listener], ready: Callable[[str], None]) -> None:
    while not all(listener.server.started for listener in listeners):
        if any(listener.server.should_exit for listener in listeners):
            return
        await asyncio.sleep(0.02)
    for side in listeners[1:]:
        print(
            f"playproof metrics on {side.url} (no token: keep it private)",
            file=sys.stderr,
            flush=True,
        )
    ready(listeners[0].url)


def parse_listen(address: str) -> tuple[str, int]:
    """HOST:PORT (or [V6HOST]:PORT) as a host and a port; ConfigError if it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected HOST:PORT, e.g. 10.0.0.5:9787, got {address!r}")
    return host, int(port)


def _print_ready(url: str) -> None:
    print(f"playproof serving on {url}", file=sys.stderr, flush=True)


def serve(
    service: Service,
    host: str = "127.0.0.1",
    port: int = 8787,
    log_level: str = "info",
    ready: Callable[[str], None] = _print_ready,
    metrics_listen: tuple[str, int] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; announce the real URL once requests are answered.

    With `metrics_listen`, a second listener in the same loop answers GET /metrics alone,
    without a token, for a Prometheus on a private network.
    """
    listeners = [_listener(uvicorn.Server(uvicorn_config(service, log_level)), host, port)]
    if metrics_listen is not None:
        companion = _Companion(metrics_config(service, log_level))
        listeners.append(_listener(companion, *metrics_listen))

    async def main() -> None:
        announce = asyncio.create_task(_announce(listeners, ready))
        first, *sides = listeners
        beside = [asyncio.create_task(side.server.serve([side.sock])) for side in sides]
        try:
            await first.server.serve(sockets=[first.sock])
        finally:
            announce.cancel()
            for side in sides:
                side.server.should_exit = True
            await asyncio.gather(*beside)

    uvloop.run(main())
