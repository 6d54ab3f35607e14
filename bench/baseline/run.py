"""Run the baseline under uvicorn on a free port; prints `baseline serving on URL` when ready."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

import uvicorn
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baseline.app import create_app


def bind(port: int) -> socket.socket:
    """A TCP socket on 127.0.0.1:port (0 picks a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def serve(db: Path, port: int) -> None:
    """Serve until SIGINT/SIGTERM, announcing the URL once uvicorn has started."""
    sock = bind(port)
    # What `uvicorn app:app` picks when uvicorn[standard] is installed.
    config = uvicorn.Config(
        create_app(db),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            break
        await asyncio.sleep(0.02)
    if server.started:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        print(f"baseline serving on {url}", file=sys.stderr, flush=True)
    await task


def main() -> None:
    """Parse `--db PATH --port N` and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True, help="SQLite file")
    parser.add_argument("--port", type=int, default=8788)
    args = parser.parse_args()
    uvloop.run(serve(args.db, args.port))


if __name__ == "__main__":
    main()
