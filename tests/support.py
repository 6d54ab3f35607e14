"""Helpers shared by the test suite: records, real server processes, provisioning."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from playproof.protocol import Record, seal
from playproof.server import admin

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "protocol"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def record_fields(**overrides: Any) -> dict[str, Any]:
    """A complete, valid record's fields (unsealed), a play that ended a second ago."""
    end = overrides.pop("end_ts", None) or now_ms() - 1000
    fields: dict[str, Any] = {
        "v": 1,
        "device_id": "scr-1",
        "journal_id": "j-1",
        "seq": 1,
        "campaign_id": "cmp-1",
        "ad_group_id": "ag-1",
        "content_id": "cnt-1",
        "store_id": "store-1",
        "supplier_id": "sup-1",
        "start_ts": end - 15_000,
        "end_ts": end,
        "duration_ms": 15_000,
        "expected_ms": 15_000,
        "end_reason": "completed",
        "clock_offset_ms": 0,
        "clock_synced": True,
        "screenshot_sha256": None,
        "screenshot_at_ms": None,
    }
    fields.update(overrides)
    return fields


def make_record(**overrides: Any) -> Record:
    """A sealed record with valid defaults; any field can be overridden."""
    return seal(Record(**record_fields(**overrides)))


@contextlib.contextmanager
def store_stall(db_url: str) -> Iterator[None]:
    """Another writer holds SQLite's write lock until the block ends: the service's commits
    wait (as behind a long checkpoint or a slow disk; its busy timeout is 10 s)."""
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def provision(db_url: str, device_id: str, store_id: str = "store-1") -> str:
    """Register a device through the public admin API and return its token."""

    async def add() -> str:
        async with admin.opened(db_url) as store:
            return await admin.add_device(store, device_id, store_id)

    # A thread of its own, so that async tests (with a loop running) can call it too.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(add())).result()


class ChildProcess:
    """A playproof command in a real process, its stderr followed until it says it is ready."""

    GRACE_S = 20.0  # how long `stop` waits after SIGTERM before SIGKILL

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = b""

    def _spawn(
        self,
        cmd: list[str],
        ready: bytes,
        what: str,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> re.Match[bytes]:
        """Start `cmd` and return the match of `ready` in its stderr; RuntimeError if it dies."""
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            self.log += line
            match = re.search(ready, line)
            if match:
                _drain(self.proc)
                return match
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"{what} did not start: {self.log.decode(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM (what is under way finishes) and wait; SIGKILL past GRACE_S; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class ServerProcess(ChildProcess):
    """`playproof serve` in a real process on a free port (or on `port`, to restart on it)."""

    def __init__(
        self, db_url: str, *extra: str, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        super().__init__()
        self.db_url = db_url
        self.extra = extra
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        """Start the process and return its base URL once it answers /healthz."""
        cmd = [
            sys.executable,
            "-m",
            "playproof",
            "serve",
            "--db",
            self.db_url,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.extra,
        ]
        ready = self._spawn(cmd, rb"playproof serving on (http://\S+)", "server", timeout, self.env)
        self.url = ready.group(1).decode()
        return self.url

    @property
    def stream_url(self) -> str:
        """The WebSocket stream's URL."""
        return self.url.replace("http://", "ws://") + "/v1/stream"

    @property
    def metrics_url(self) -> str:
        """The `--metrics-listen` address (no token) the server announced as it started."""
        found = re.search(rb"playproof metrics on (http://\S+)", self.log)
        assert found, self.log.decode(errors="replace")
        return found.group(1).decode()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    """Keep reading stderr in the background so the server never blocks on a full pipe."""
    import threading

    def pump() -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    threading.Thread(target=pump, daemon=True).start()


def envelope(
    records: list[Record], device_id: str = "scr-1", sent_at: int | None = None
) -> dict[str, Any]:
    """An envelope around records, sent now unless told otherwise."""
    import json

    from playproof.protocol import encode

    return {
        "device_id": device_id,
        "sent_at": now_ms() if sent_at is None else sent_at,
        "impressions": [json.loads(encode(r)) for r in records],
    }


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def client(url: str, token: str | None = None) -> httpx.Client:
    """An HTTP client for the service, with the device token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def png(width: int = 8, height: int = 6, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real, decodable PNG of one colour, written by hand (the format is simple enough)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">2I5B", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )
