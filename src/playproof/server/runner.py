"""Running the service under uvicorn, on a socket we bind ourselves so port 0 works."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable

import uvicorn
import uvloop

from playproof.protocol import MAX_BATCH_BYTES
from playproof.server.app import create_app
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
        lifespan="on",
        log_level=log_level,
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
    )


async def _announce(server: uvicorn.Server, url: str, ready: Callable[[str], None]) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.02)
    ready(url)


def _print_ready(url: str) -> None:
    print(f"playproof serving on {url}", file=sys.stderr, flush=True)


def serve(
    service: Service,
    host: str = "127.0.0.1",
    port: int = 8787,
    log_level: str = "info",
    ready: Callable[[str], None] = _print_ready,
) -> None:
    """Serve until SIGINT or SIGTERM; announce the real URL once requests are answered."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn_config(service, log_level)
    server = uvicorn.Server(config)

    async def main() -> None:
        announce = asyncio.create_task(_announce(server, f"http://{shown}:{bound}", ready))
        try:
            await server.serve(sockets=[sock])
        finally:
            announce.cancel()

    uvloop.run(main())
