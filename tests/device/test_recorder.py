"""Recording plays: start and end, context manager, loops, clock steps, crashes, screenshots."""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.device import CaptureSource, Clock, Device, NtpServer, screenshot_moment
from playproof.device.clock import Stamp
from playproof.device.recorder import end_ts
from playproof.errors import DeviceError
from playproof.protocol import EndReason, checksum_ok
from playproof.rules import HOUR_MS
from tests.device.helpers import FixedPicture, SteeredTime, content, device_config
from tests.support import png


async def open_device(
    data_dir: Path, clock: Clock | None = None, capture: CaptureSource | None = None, **kw: Any
) -> Device:
    """A device with no screen unless given a capture source, delivering only if given a URL."""
    return await Device.open(device_config(data_dir, **kw), capture=capture, clock=clock)


@pytest.mark.parametrize("reason", ["completed", "skipped", "interrupted", "error"])
async def test_one_call_at_the_start_one_at_the_end(data_dir: Path, reason: EndReason) -> None:
    device = await open_device(data_dir)
    play = await device.start(content(expected_ms=200))
    await asyncio.sleep(0.05)
    record = await play.end(reason)
    assert record.end_reason == reason
    assert record.seq == 1 and record.journal_id == device.journal.journal_id
    assert record.store_id == "store-1" and record.expected_ms == 200
    assert record.duration_ms >= 50
    assert record.start_ts <= record.end_ts
    assert abs((record.end_ts - record.start_ts) - record.duration_ms) <= 2
    assert not record.clock_synced and record.clock_offset_ms == 0
    assert checksum_ok(record)
    assert [p.seq for p in await device.journal.pending()] == [1]
    await device.close()


async def test_a_play_ends_once(data_dir: Path) -> None:
    device = await open_device(data_dir)
    play = await device.start(content())
    await play.end("skipped")
    with pytest.raises(DeviceError, match="already ended"):
        await play.end("completed")
    await device.close()


async def test_the_context_manager_ends_completed_or_error(data_dir: Path) -> None:
    device = await open_device(data_dir)
    async with device.play(content()) as play:
        pass
    with pytest.raises(ZeroDivisionError):
        async with device.play(content()):
            _ = 1 / 0
    stored = [p.body for p in await device.journal.pending()]
    assert play.ended
    assert [b'"end_reason":"completed"' in b for b in stored] == [True, False]
    assert b'"end_reason":"error"' in stored[1]
    await device.close()


async def test_a_cancelled_play_is_recorded_as_interrupted(data_dir: Path) -> None:
    device = await open_device(data_dir)

    async def show() -> None:
        async with device.play(content()):
            await asyncio.sleep(60)

    task = asyncio.create_task(show())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [pending] = await device.journal.pending()
    assert b'"end_reason":"interrupted"' in pending.body
    await device.close()


async def test_a_loop_gives_one_record_per_pass_back_to_back(data_dir: Path) -> None:
    device = await open_device(data_dir)
    async with device.loop(content(expected_ms=30)) as loop:
        for _ in range(2):
            await asyncio.sleep(0.03)
            await loop.next_pass()
        await asyncio.sleep(0.03)
    assert loop.passes == 3
    bodies = [p.body for p in await device.journal.pending()]
    records = [msgspec.json.decode(b) for b in bodies]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert all(r["end_reason"] == "completed" for r in records)
    assert records[0]["end_ts"] == records[1]["start_ts"]
    assert records[1]["end_ts"] == records[2]["start_ts"]
    await device.close()


async def test_a_wall_clock_step_back_mid_play_keeps_start_before_end(data_dir: Path) -> None:
    steered = SteeredTime()
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    device = await open_device(data_dir, clock)
    play = await device.start(content())
    steered.advance(5)
    steered.step(-3600)  # an hour back, mid-play
    record = await play.end()
    assert clock.steps == 1
    assert record.duration_ms >= 5000
    assert record.start_ts <= record.end_ts
    assert record.end_ts == record.start_ts + record.duration_ms
    await device.close()


async def test_a_step_forward_mid_play_does_not_stretch_it(data_dir: Path) -> None:
    steered = SteeredTime()
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    device = await open_device(data_dir, clock)
    play = await device.start(content())
    steered.advance(2)
    steered.step(+7200)
    record = await play.end()
    assert record.end_ts == record.start_ts + record.duration_ms
    await device.close()


async def test_an_offset_change_mid_play_keeps_the_records_own_offset(data_dir: Path) -> None:
    steered = SteeredTime(wall_skew_s=120)
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    device = await open_device(data_dir, clock)
    play = await device.start(content())
    steered.advance(3)
    mono = clock.monotonic()
    clock.observe_service_time(round(steered.wall() * 1000) - 120_000, mono, mono)
    assert clock.offset_ms == pytest.approx(-120_000, abs=50)
    record = await play.end()
    assert record.clock_offset_ms == 0, "the offset applied when the play started"
    assert abs(record.end_ts - record.start_ts - record.duration_ms) <= 2
    await device.close()


async def test_a_play_an_hour_after_the_last_sync_is_not_clock_synced(
    data_dir: Path, chrony: NtpServer
) -> None:
    steered = SteeredTime()
    clock = Clock([chrony], wall=steered.wall, monotonic=steered.monotonic)
    device = await open_device(data_dir, clock)
    fresh = await (await device.start(content())).end()
    steered.advance(HOUR_MS / 1000 + 1)
    old = await (await device.start(content())).end()
    assert (fresh.clock_synced, old.clock_synced) == (True, False)
    await device.close()


async def test_records_held_past_four_hours_are_reported_stale(data_dir: Path) -> None:
    """Offline for 4 h on an injected clock: the status says what the service will reject."""
    steered = SteeredTime()
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    device = await open_device(data_dir, clock, url="http://127.0.0.1:9", token="t")
    for _ in range(3):
        await (await device.start(content())).end()
    steered.advance(3 * 3600)
    await (await device.start(content())).end()
    assert (await device.status())["stale_queued"] == 0
    steered.advance(3600 + 60)
    status = await device.status()
    assert status["stale_queued"] == 3
    assert status["queue_depth"] == 4
    await device.close(flush_timeout_s=0.1)


async def test_invalid_content_is_refused_before_anything_is_stored(data_dir: Path) -> None:
    device = await open_device(data_dir)
    bad = content(content_id="has spaces")
    with pytest.raises(DeviceError, match="content_id"):
        await device.start(bad)
    assert (await (await device.start(content())).end()).seq == 1
    await device.close()


async def test_the_screenshot_is_taken_in_the_window_stored_and_named(data_dir: Path) -> None:
    picture = png(4, 4, (0, 128, 255))
    source = FixedPicture(picture)
    device = await open_device(data_dir, capture=source)
    play = await device.start(content(expected_ms=400))
    await asyncio.sleep(0.5)
    record = await play.end()
    assert source.calls == 1
    sha = hashlib.sha256(picture).hexdigest()
    assert record.screenshot_sha256 == sha
    assert record.screenshot_at_ms is not None
    assert 160 <= record.screenshot_at_ms <= record.duration_ms
    assert (data_dir / "screenshots" / "pending" / f"{sha}.png").read_bytes() == picture
    await device.close()


async def test_a_play_ended_before_the_window_has_no_screenshot(data_dir: Path) -> None:
    source = FixedPicture(png(2, 2, (1, 2, 3)))
    device = await open_device(data_dir, capture=source)
    record = await (await device.start(content(expected_ms=10_000))).end("skipped")
    assert source.calls == 0
    assert (record.screenshot_sha256, record.screenshot_at_ms) == (None, None)
    await device.close()


@given(expected_ms=st.integers(1, 10**9), seed=st.integers(0, 2**32))
def test_the_screenshot_moment_is_always_between_40_and_60_percent(
    expected_ms: int, seed: int
) -> None:
    moment = screenshot_moment(expected_ms, random.Random(seed))
    if moment is None:
        assert expected_ms * 0.6 - expected_ms * 0.4 < 1
        return
    assert expected_ms * 40 <= moment * 100 <= expected_ms * 60


def test_the_screenshot_moment_covers_the_window() -> None:
    rng = random.Random(7)
    moments = [screenshot_moment(10_000, rng) for _ in range(2000)]
    assert min(m for m in moments if m is not None) < 4_100
    assert max(m for m in moments if m is not None) > 5_900


CRASHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from playproof.device import Content, Device, DeviceConfig

    async def main():
        config = DeviceConfig(device_id="scr-1", store_id="store-1",
                              data_dir=Path(sys.argv[1]), checkpoint_s=0.1)
        device = await Device.open(config, capture=None)
        ad = Content(campaign_id="c", ad_group_id="a", content_id="x", supplier_id="s",
                     expected_ms=60_000)
        await (await device.start(ad)).end()
        await device.start(ad)
        print("started", flush=True)
        await asyncio.sleep(float(sys.argv[2]))
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("lived_s", [0.0, 0.6])
async def test_a_play_started_then_killed_comes_back_as_device_restart(
    data_dir: Path, lived_s: float
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(data_dir), str(lived_s)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9 and "started" in proc.stdout, proc.stderr
    device = await open_device(data_dir)
    [recovered] = device.recovered
    assert (recovered.seq, recovered.end_reason) == (2, "device_restart")
    assert recovered.duration_ms <= lived_s * 1000 + 500
    if lived_s:
        assert recovered.duration_ms > 0, "checkpoints saved progress before the kill"
    assert abs(recovered.end_ts - recovered.start_ts - recovered.duration_ms) <= 2
    assert checksum_ok(recovered)
    assert (await (await device.start(content())).end()).seq == 3
    assert [p.seq for p in await device.journal.pending()] == [1, 2, 3]
    await device.close()


@given(
    start_raw=st.floats(1e12, 2e12),
    offset=st.integers(-(10**7), 10**7),
    wall_moved=st.floats(-1e7, 1e7),
    duration=st.integers(0, 10**7),
    stepped=st.booleans(),
)
def test_end_ts_is_never_before_start_ts_whatever_the_wall_clock_did(
    start_raw: float, offset: int, wall_moved: float, duration: int, stepped: bool
) -> None:
    start = Stamp(round(start_raw + offset), start_raw, 100.0, offset, True, 3)
    end = Stamp(0, start_raw + wall_moved, 100.0 + duration / 1000, offset, True, 3 + stepped)
    result = end_ts(start, end, duration)
    assert result >= start.ts_ms
    if stepped:
        assert result == start.ts_ms + duration
