"""Proof screenshots of a real screen (Xvfb), and the content-addressed store's budget."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from playproof.device import Device, MssCapture, ScreenshotStore
from tests.device.conftest import require_program
from tests.device.helpers import content, device_config, png_pixels
from tests.support import png


def paint(display: str, colour: str) -> None:
    """Paint the whole screen one colour with xsetroot."""
    xsetroot = require_program("xsetroot", "x11-xserver-utils")
    subprocess.run([xsetroot, "-display", display, "-solid", colour], check=True, timeout=10)


@pytest.mark.parametrize(
    ("colour", "rgb"), [("#ff0000", b"\xff\x00\x00"), ("#00ff80", b"\x00\xff\x80")]
)
async def test_the_default_source_captures_what_the_screen_shows(
    xvfb: str, colour: str, rgb: bytes
) -> None:
    paint(xvfb, colour)
    picture = await MssCapture(display=xvfb).capture()
    assert picture is not None and picture.startswith(b"\x89PNG\r\n\x1a\n")
    width, height, rows = png_pixels(picture)
    assert (width, height) == (320, 240)
    assert all(row == rgb * width for row in rows)


async def test_a_play_on_a_real_screen_carries_its_screenshot(xvfb: str, tmp_path: Path) -> None:
    paint(xvfb, "#123456")
    config = device_config(tmp_path / "device")
    device = await Device.open(config, capture=MssCapture(display=xvfb))
    play = await device.start(content(expected_ms=300))
    await asyncio.sleep(0.4)
    record = await play.end()
    await device.close()
    assert record.screenshot_sha256 is not None and record.screenshot_at_ms is not None
    assert record.screenshot_at_ms >= 120
    stored = tmp_path / "device" / "screenshots" / "pending" / f"{record.screenshot_sha256}.png"
    data = stored.read_bytes()
    assert hashlib.sha256(data).hexdigest() == record.screenshot_sha256
    _, _, rows = png_pixels(data)
    assert rows[120][:3] == b"\x12\x34\x56"


async def test_no_display_means_no_screenshot_not_a_failure(tmp_path: Path) -> None:
    source = MssCapture(display=":4242")  # no such display
    assert await source.capture() is None


async def test_the_store_keeps_a_byte_budget_oldest_first(tmp_path: Path) -> None:
    pictures = [png(8, 8, (i, i, i)) for i in range(5)]
    size = len(pictures[0])
    store = await ScreenshotStore.open(tmp_path / "shots", max_bytes=3 * size + size // 2)
    hashes = []
    for picture in pictures:
        hashes.append(await store.put(picture))
        await asyncio.sleep(0.01)  # distinct mtimes, so that a reopen sees the same order
    assert store.pending() == hashes[2:]
    assert store.dropped == 2
    await store.mark_uploaded(hashes[2])
    assert (tmp_path / "shots" / "sent" / f"{hashes[2]}.png").exists()
    again = await ScreenshotStore.open(tmp_path / "shots", max_bytes=3 * size + size // 2)
    assert again.pending() == hashes[3:]
    assert await again.read(hashes[2]) == pictures[2]
    assert await again.put(pictures[4]) == hashes[4], "content-addressed: stored once"
    assert again.pending() == hashes[3:]


async def test_the_store_takes_only_png(tmp_path: Path) -> None:
    store = await ScreenshotStore.open(tmp_path / "shots")
    with pytest.raises(ValueError, match="PNG"):
        await store.put(b"GIF89a...")
