"""Proof screenshots: when to take one, where to get it, and where to keep it.

A play's screenshot is taken at a moment drawn uniformly between 40 % and 60 %
of its expected duration. The picture comes from a `CaptureSource`, a one-method
interface a player can replace (a video pipeline has better frames than the
screen); the default captures the real screen with `mss` when a display exists.
Pictures are stored content-addressed in the data folder under a byte budget
(oldest first out) and uploaded apart from the records, best effort.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import threading
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from playproof.device.blocking import run_blocking

log = logging.getLogger(__name__)

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
WINDOW: Final = (40, 60)


def screenshot_moment(expected_ms: int, rng: random.Random) -> int | None:
    """A moment in ms drawn uniformly in [40 %, 60 %] of `expected_ms`; None if none fits."""
    low = math.ceil(expected_ms * WINDOW[0] / 100)
    high = math.floor(expected_ms * WINDOW[1] / 100)
    if high < low:
        return None
    return rng.randint(low, high)


@runtime_checkable
class CaptureSource(Protocol):
    """Where proof pictures come from: PNG bytes of what the screen shows now, or None."""

    async def capture(self) -> bytes | None:
        """The picture on screen now, as PNG bytes; None when there is none to take."""
        ...


class MssCapture:
    """Captures a real screen with mss (X11 on Linux, native on Windows and macOS)."""

    def __init__(self, display: str | None = None, monitor: int = 1) -> None:
        self.display = display
        self.monitor = monitor
        self._warned = False

    async def capture(self) -> bytes | None:
        """Grab the monitor on the shared pool; None (logged once) when the screen fails."""
        try:
            return await run_blocking(self._grab)
        except Exception as exc:  # mss raises ScreenShotError and ctypes errors alike
            if not self._warned:
                log.warning("screen capture failed, plays go without screenshots: %s", exc)
                self._warned = True
            return None

    def _grab(self) -> bytes:
        import mss
        import mss.tools

        kwargs: dict[str, Any] = {}
        if self.display and sys.platform == "linux":
            kwargs["display"] = self.display
        with mss.MSS(**kwargs) as screen:
            monitors = screen.monitors
            area = monitors[self.monitor] if self.monitor < len(monitors) else monitors[0]
            image = screen.grab(area)
        png = mss.tools.to_png(image.rgb, image.size)
        if png is None:
            raise ValueError("mss returned no PNG data")
        return png


def default_capture() -> CaptureSource | None:
    """MssCapture when this machine has a display to capture, else None."""
    if sys.platform == "linux" and not os.environ.get("DISPLAY"):
        return None
    return MssCapture()


class Shot(NamedTuple):
    """A stored screenshot: its hash, size, and whether the service has it."""

    sha256: str
    size: int
    uploaded: bool


class ScreenshotStore:
    """PNGs by SHA-256 in `<data>/screenshots/{pending,sent}/`, oldest first out past a budget."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._index: dict[str, Shot] = {}
        self.dropped = 0

    @classmethod
    async def open(cls, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> ScreenshotStore:
        """Create the folders if missing and index what is there, oldest first."""
        store = cls(folder, max_bytes)
        await run_blocking(store._load)
        return store

    def _load(self) -> None:
        found: list[tuple[float, Shot]] = []
        for sub, uploaded in (("pending", False), ("sent", True)):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
            for path in (self.folder / sub).glob("*.png"):
                stat = path.stat()
                found.append((stat.st_mtime, Shot(path.stem, stat.st_size, uploaded)))
        for _, shot in sorted(found):
            self._index[shot.sha256] = shot

    def _path(self, shot: Shot) -> Path:
        return self.folder / ("sent" if shot.uploaded else "pending") / f"{shot.sha256}.png"

    async def put(self, png: bytes) -> str:
        """Store a PNG under its SHA-256 (once) and return the hash."""
        if not png.startswith(PNG_MAGIC):
            raise ValueError("expected PNG bytes from the capture source, got something else")
        return await run_blocking(self._put, png)

    def _put(self, png: bytes) -> str:
        sha = hashlib.sha256(png).hexdigest()
        with self._lock:
            if sha in self._index:
                return sha
            shot = Shot(sha, len(png), False)
            path = self._path(shot)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(png)
            os.replace(tmp, path)
            self._index[sha] = shot
            self._trim()
        return sha

    def _trim(self) -> None:
        total = sum(s.size for s in self._index.values())
        while total > self.max_bytes and len(self._index) > 1:
            sha, shot = next(iter(self._index.items()))
            self._path(shot).unlink(missing_ok=True)
            del self._index[sha]
            total -= shot.size
            if not shot.uploaded:
                self.dropped += 1
                level = logging.WARNING if self.dropped % 100 == 1 else logging.DEBUG
                log.log(level, "screenshot budget full: %d dropped before upload", self.dropped)

    def pending(self) -> list[str]:
        """Hashes not yet uploaded, oldest first."""
        with self._lock:
            return [s.sha256 for s in self._index.values() if not s.uploaded]

    async def read(self, sha256: str) -> bytes | None:
        """The PNG stored under a hash, or None when it is gone."""
        shot = self._index.get(sha256)
        if shot is None:
            return None
        try:
            return await run_blocking(self._path(shot).read_bytes)
        except FileNotFoundError:
            return None

    async def mark_uploaded(self, sha256: str) -> None:
        """Move a picture to `sent/`: the service has it."""
        await run_blocking(self._mark, sha256)

    def _mark(self, sha256: str) -> None:
        with self._lock:
            shot = self._index.get(sha256)
            if shot is None or shot.uploaded:
                return
            done = shot._replace(uploaded=True)
            os.replace(self._path(shot), self._path(done))
            self._index[sha256] = done

    def path_of(self, sha256: str) -> Path | None:
        """Where a stored picture lies, or None."""
        shot = self._index.get(sha256)
        return None if shot is None else self._path(shot)
