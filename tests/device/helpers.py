"""Helpers for the device tests: clocks to steer, contents, pictures, real processes."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from playproof.device import Content, DeviceConfig, UplinkConfig
from tests.support import ServerProcess, free_port


def free_udp_port() -> int:
    """A UDP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SteeredTime:
    """Real time plus what the test adds: `advance` moves both clocks, `step` only the wall."""

    def __init__(self, wall_skew_s: float = 0.0, rate: float = 1.0) -> None:
        self.jump = 0.0
        self.wall_offset = wall_skew_s
        self.rate = rate
        self._base = time.time()

    def wall(self) -> float:
        """The raw wall clock a device reads (seconds)."""
        now = time.time()
        return self._base + (now - self._base) * self.rate + self.jump + self.wall_offset

    def monotonic(self) -> float:
        """The monotonic clock a device reads (seconds)."""
        return time.monotonic() + self.jump

    def advance(self, seconds: float) -> None:
        """Time passes for both clocks at once (no waiting)."""
        self.jump += seconds

    def step(self, seconds: float) -> None:
        """Someone sets the wall clock: it jumps, the monotonic clock does not."""
        self.wall_offset += seconds


def content(expected_ms: int = 15_000, content_id: str = "cnt-1") -> Content:
    """A content with valid ids."""
    return Content(
        campaign_id="cmp-1",
        ad_group_id="ag-1",
        content_id=content_id,
        supplier_id="sup-1",
        expected_ms=expected_ms,
    )


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB PNG with filter 0 rows (as mss writes)."""
    import struct

    pos, idat = 8, b""
    width = height = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">2I", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    rows = [raw[y * stride + 1 : (y + 1) * stride] for y in range(height)]
    return width, height, rows


class FixedPicture:
    """A capture source that always shows the same picture (a player's own source)."""

    def __init__(self, picture: bytes) -> None:
        self.picture = picture
        self.calls = 0

    async def capture(self) -> bytes | None:
        """The picture."""
        self.calls += 1
        return self.picture


def device_config(
    data_dir: Path, url: str | None = None, token: str = "", device_id: str = "scr-1", **kw: Any
) -> DeviceConfig:
    """A device config for tests: quick retries, so that outages end fast."""
    uplink_kw = {k: kw.pop(k) for k in list(kw) if k in UplinkConfig.__dataclass_fields__}
    uplink = None
    if url is not None:
        settings: dict[str, Any] = {
            "backoff_base_s": 0.05,
            "backoff_cap_s": 0.5,
            "stream_retry_s": 1.0,
            "auth_backoff_s": 0.5,
            "refused_backoff_s": 0.5,
            "status_interval_s": 60.0,
            **uplink_kw,
        }
        uplink = UplinkConfig(server_url=url, token=token, **settings)
    return DeviceConfig(
        device_id=device_id, store_id="store-1", data_dir=data_dir, uplink=uplink, **kw
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` (a deadline, not a speed)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def db_path(db_url: str) -> str:
    """The file of a sqlite:/// URL."""
    return db_url.removeprefix("sqlite:///")


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the service's SQLite database, read directly."""
    conn = sqlite3.connect(db_path(db_url), timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def impressions(db_url: str, device_id: str) -> list[dict[str, Any]]:
    """The device's stored impressions, by sequence."""
    conn = sqlite3.connect(db_path(db_url), timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT * FROM impressions WHERE device_id = ? ORDER BY journal_id, seq", (device_id,)
        ).fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


def write_playlist(path: Path, items: list[dict[str, Any]]) -> Path:
    """A playlist file with these items."""
    path.write_text(json.dumps({"items": items}))
    return path


def item(duration_ms: int, content_id: str = "cnt-1", **extra: Any) -> dict[str, Any]:
    """One playlist item."""
    return {
        "campaign_id": "cmp-1",
        "ad_group_id": "ag-1",
        "content_id": content_id,
        "supplier_id": "sup-1",
        "duration_ms": duration_ms,
        **extra,
    }


class PlayerProcess:
    """`playproof player` in a real process, its log lines collected as they come."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "playproof", "player", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first log line containing `text`; AssertionError with the log if none comes."""
        for line in self.lines:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no log line with {text!r}; log:\n{self.log()}")

    def log(self) -> str:
        """Everything logged so far."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to end; its exit code."""
        code = self.proc.wait(timeout)
        self.log()
        return code

    def ensure_dead(self) -> None:
        """Kill the process if it still runs (test cleanup)."""
        if self.proc.poll() is None:
            self.kill()


class Service:
    """A service on a fixed port that a test can stop and start again on the same database."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: ServerProcess | None = None

    def start(self) -> None:
        """Start (again) on the same port and database."""
        self.proc = ServerProcess(self.db_url, "--port", str(self.port))
        self.proc.start()

    def kill(self) -> None:
        """SIGKILL the service, if it runs."""
        if self.proc is not None:
            self.proc.kill()
            self.proc = None
