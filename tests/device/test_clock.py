"""The clock against a real NTP server (chronyd on loopback) and injected raw clocks."""

from __future__ import annotations

import asyncio
import time

import pytest

from playproof.device.clock import Clock, NtpServer, parse_server
from playproof.errors import DeviceError
from playproof.rules import HOUR_MS
from tests.device.helpers import SteeredTime, free_udp_port


def true_ms() -> float:
    return time.time() * 1000


async def test_a_skewed_raw_clock_is_measured_and_corrected(chrony: NtpServer) -> None:
    steered = SteeredTime(wall_skew_s=-754.321)  # the device's clock is 12.5 min slow
    clock = Clock([chrony], wall=steered.wall, monotonic=steered.monotonic)
    assert not clock.synced()
    sample = await clock.sync()
    assert sample is not None and sample.server == str(chrony)
    assert clock.synced()
    assert clock.source == "ntp"
    # chronyd serves this machine's clock: the offset is the skew we put in, back.
    assert clock.offset_ms == pytest.approx(754_321, abs=50)
    assert clock.now_ms() == pytest.approx(true_ms(), abs=50)
    assert clock.last_sync_ts == pytest.approx(true_ms(), abs=1_000)
    stamp = clock.stamp()
    assert stamp.synced and stamp.offset_ms == clock.offset_ms


async def test_drift_is_the_trend_of_the_offset_in_ppm(chrony: NtpServer) -> None:
    # A raw clock that gains 2 % (20,000 ppm): a signal well above the exchanges' noise.
    steered = SteeredTime(rate=1 + 20_000e-6)
    clock = Clock([chrony], wall=steered.wall, monotonic=steered.monotonic)
    assert clock.drift_ppm is None
    for _ in range(5):
        assert await clock.sync() is not None
        await asyncio.sleep(0.3)
    assert clock.drift_ppm is not None
    # The offset falls as the raw clock runs ahead: negative.
    assert clock.drift_ppm == pytest.approx(-20_000, rel=0.1)
    assert clock.steps == 0, "a fast clock drifts; it does not step"


async def test_an_unreachable_server_leaves_the_clock_unsynced_with_a_clear_error() -> None:
    dead = NtpServer("127.0.0.1", free_udp_port())
    clock = Clock([dead], timeout_s=0.5)
    assert await clock.sync() is None
    assert not clock.synced()
    assert clock.last_error is not None and str(dead) in clock.last_error
    stamp = clock.stamp()
    assert not stamp.synced and stamp.offset_ms == 0


async def test_one_server_answering_is_enough(chrony: NtpServer) -> None:
    clock = Clock([NtpServer("127.0.0.1", free_udp_port()), chrony], timeout_s=0.5)
    sample = await clock.sync()
    assert sample is not None and sample.server == str(chrony)
    assert clock.synced()


async def test_synced_means_a_successful_exchange_at_most_an_hour_old(chrony: NtpServer) -> None:
    steered = SteeredTime()
    clock = Clock([chrony], wall=steered.wall, monotonic=steered.monotonic)
    await clock.sync()
    steered.advance(HOUR_MS / 1000 - 1)
    assert clock.stamp().synced
    steered.advance(2)
    assert not clock.stamp().synced
    assert clock.steps == 0, "time passing on both clocks is not a step"
    await clock.sync()
    assert clock.stamp().synced


async def test_the_run_loop_syncs_on_demand(chrony: NtpServer) -> None:
    clock = Clock([chrony], interval_s=3600)
    task = asyncio.create_task(clock.run())
    try:
        for _ in range(200):
            if clock.synced():
                break
            await asyncio.sleep(0.05)
        assert clock.synced()
        first = clock.last_sync_ts
        await asyncio.sleep(0.01)
        clock.request_sync()
        for _ in range(200):
            if clock.last_sync_ts != first:
                break
            await asyncio.sleep(0.05)
        assert clock.last_sync_ts != first
    finally:
        task.cancel()


def test_a_wall_clock_step_is_detected_and_compensated() -> None:
    steered = SteeredTime()
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    before = clock.now_ms()
    steered.step(-30)  # someone sets the clock back 30 s
    after = clock.now_ms()
    assert clock.steps == 1
    assert clock.last_step_ms == pytest.approx(-30_000, abs=50)
    assert after >= before, "the corrected clock stays continuous"
    assert after - before < 1_000
    steered.advance(120)  # two minutes of normal time: not a step
    clock.now_ms()
    assert clock.steps == 1


async def test_the_services_clock_is_a_fallback_without_ntp() -> None:
    steered = SteeredTime(wall_skew_s=3600)  # an hour fast, no NTP configured
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    acked = clock.monotonic()
    # A 20 ms round trip; the service stamped our request at its (true) time, half-way.
    clock.observe_service_time(round(true_ms() - 10), acked - 0.020, acked)
    assert clock.source == "service"
    assert clock.offset_ms == pytest.approx(-3_600_000, abs=50)
    assert not clock.stamp().synced, "only NTP makes a record clock_synced"


async def test_ntp_wins_over_the_service_estimate(chrony: NtpServer) -> None:
    steered = SteeredTime(wall_skew_s=100)
    clock = Clock([chrony], wall=steered.wall, monotonic=steered.monotonic)
    await clock.sync()
    mono = clock.monotonic()
    clock.observe_service_time(round(true_ms() + 5_000), mono, mono)  # a service 5 s off
    assert clock.source == "ntp"
    assert clock.offset_ms == pytest.approx(-100_000, abs=50)


@pytest.mark.parametrize(
    ("text", "server"),
    [
        ("pool.ntp.org", NtpServer("pool.ntp.org", 123)),
        ("127.0.0.1:1123", NtpServer("127.0.0.1", 1123)),
        ("[::1]:1123", NtpServer("::1", 1123)),
    ],
)
def test_ntp_servers_are_host_or_host_port(text: str, server: NtpServer) -> None:
    assert parse_server(text) == server


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:x", ":123"])
def test_a_bad_ntp_server_is_a_clear_error(text: str) -> None:
    with pytest.raises(DeviceError, match="expected an NTP server"):
        parse_server(text)


def test_a_stamp_read_across_a_preemption_is_read_again() -> None:
    """A stamp's wall and monotonic reads are taken together: a pair set apart (the process
    preempted between them) is read again, so that a play's end time (from the wall clock)
    and its duration (from the monotonic one) agree."""
    # Clock() reads both once to anchor; then the first pair is split by 5 ms.
    monos = iter([0.0, 10.0, 10.005, 20.0, 20.0001])
    walls = iter([0.0, 1000.0, 1010.0])
    clock = Clock(wall=lambda: next(walls), monotonic=lambda: next(monos))
    stamp = clock.stamp()
    assert (stamp.raw_ms, stamp.mono) == (1_010_000.0, 20.0001)
