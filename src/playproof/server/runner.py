"""Running the service under uvicorn, on a socket we bind ourselves so port 0 works."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import uvicorn
import uvloop

from playproof.errors import ConfigError
from playproof.listen import bind
from playproof.protocol import MAX_BATCH_BYTES
from playproof.server.app import create_app, create_metrics_app
from playproof.server.collector import GC_YOUNG_THRESHOLD, keep_frozen
from playproof.server.service import Service
from playproof.server.stream import MAX_FRAME_BYTES

log = logging.getLogger("playproof")


# How long a thread holds the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005
# The WebSocket implementation uvicorn runs the stream on. bench/stream.py measures the
# others uvicorn offers (`websockets`, `wsproto`) on the same frames; it sets this to do so.
WS_IMPL = "websockets-sansio"


def uvicorn_settings(log_level: str = "info") -> dict[str, Any]:
    """uvicorn's keyword arguments for the service, without the app.

    Shared with bench/stream.py's echo reference, so that it runs on exactly these settings.
    """
    return {
        "loop": "uvloop",
        "http": "httptools",
        "ws": WS_IMPL,
        "ws_max_size": max(MAX_FRAME_BYTES, MAX_BATCH_BYTES) + 1024,
        "ws_per_message_deflate": False,
        # The peer's address is the client's: X-Forwarded-For is read by the service
        # itself, and only from its configured trusted proxies (server/guard.py).
        "proxy_headers": False,
        "lifespan": "on",
        "log_level": log_level,
        "access_log": False,
        "backlog": 4096,
        "timeout_keep_alive": 30,
        "timeout_graceful_shutdown": 10,
    }


def uvicorn_config(service: Service, log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings tuned for many long-lived device connections."""
    return uvicorn.Config(create_app(service), **uvicorn_settings(log_level))


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
    gc.collect()
    gc.freeze()
    # Young collections a tenth as often: a stream frame allocates dozens of containers
    # that die young anyway, and each collection of the young also promotes whatever is
    # in flight at that instant towards the full collections.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    for side in listeners[1:]:
        print(
            f"playproof metrics on {side.url} (no token: keep it private)",
            file=sys.stderr,
            flush=True,
        )
    ready(listeners[0].url)


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
        frozen = asyncio.create_task(keep_frozen())
        first, *sides = listeners
        beside = [asyncio.create_task(side.server.serve([side.sock])) for side in sides]
        try:
            await first.server.serve(sockets=[first.sock])
        finally:
            frozen.cancel()
            announce.cancel()
            for side in sides:
                side.server.should_exit = True
            await asyncio.gather(*beside)

    # The store's threads (the SQLite writer, the token readers) give up the GIL around
    # every statement and must win it back from a busy event loop, which by default
    # holds it for up to 5 ms: a token lookup of a few statements then waited tens of
    # milliseconds, and at 1000 lookups a second (10,000 screens, a frame every 10 s,
    # each past the 2 s token cache) they queued for seconds (issue 17). A shorter
    # interval hands the GIL over sooner.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    uvloop.run(main())
