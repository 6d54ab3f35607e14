"""Delivery against a real `playproof serve` on loopback: outages, fallbacks, credentials."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from playproof.device import Clock, Device
from tests.device.helpers import (
    FixedPicture,
    Service,
    SteeredTime,
    content,
    device_config,
    eventually,
    impressions,
    query,
)
from tests.support import now_ms, png, provision


@pytest.fixture
def token(service: Service) -> str:
    return provision(service.db_url, "scr-1")


@pytest.fixture
async def device(data_dir: Path, service: Service, token: str) -> AsyncIterator[Device]:
    dev = await Device.open(device_config(data_dir, service.url, token), capture=None)
    yield dev
    await dev.close(flush_timeout_s=0.5)


async def record(device: Device, count: int, expected_ms: int = 100) -> list[int]:
    """Record `count` short plays; their sequences."""
    seqs = []
    for _ in range(count):
        play = await device.start(content(expected_ms=expected_ms))
        seqs.append((await play.end()).seq)
    return seqs


async def drained(device: Device, timeout: float = 30.0) -> None:
    async def empty() -> bool:
        return (await device.journal.stats()).queue_depth == 0

    await eventually(empty, timeout, "the journal to drain")


def assert_exactly_once_oldest_first(db_url: str, seqs: list[int]) -> list[dict[str, Any]]:
    rows = impressions(db_url, "scr-1")
    assert [r["seq"] for r in rows] == seqs, "every play exactly once"
    assert len({r["journal_id"] for r in rows}) == 1
    arrivals = [r["received_at"] for r in rows]
    assert arrivals == sorted(arrivals), "delivered oldest first"
    assert query(db_url, "SELECT count(*) FROM rejects") == [(0,)]
    return rows


async def test_plays_during_an_outage_arrive_exactly_once_oldest_first(
    device: Device, service: Service
) -> None:
    before = await record(device, 5)
    await drained(device)
    service.kill()
    during = await record(device, 10)
    await eventually(lambda: _true(device.uplink and device.uplink.state == "offline"))
    status = await device.status()
    assert status["queue_depth"] == 10 and status["transport"] == "offline"
    assert status["oldest_queued_ts"] is not None
    service.start()
    await drained(device)
    rows = assert_exactly_once_oldest_first(service.db_url, before + during)
    assert {r["end_reason"] for r in rows} == {"completed"}


async def _true(value: object) -> bool:
    return bool(value)


async def test_a_backlog_bigger_than_a_batch_drains_oldest_first(
    data_dir: Path, db_url: str
) -> None:
    svc = Service(db_url)
    token = provision(db_url, "scr-1")
    device = await Device.open(device_config(data_dir, svc.url, token), capture=None)
    seqs = await record(device, 1200)
    try:
        svc.start()
        await drained(device, timeout=60)
        assert_exactly_once_oldest_first(db_url, seqs)
        assert device.uplink is not None and device.uplink.results["accepted"] == 1200
    finally:
        await device.close(flush_timeout_s=0.5)
        svc.kill()


@pytest.mark.parametrize("transports", [("http",), ("stream",)])
async def test_each_transport_alone_delivers(
    data_dir: Path, service: Service, token: str, transports: tuple[str, ...]
) -> None:
    config = device_config(data_dir, service.url, token, transports=transports, gzip=True)
    device = await Device.open(config, capture=None)
    seqs = await record(device, 30)
    await drained(device)
    assert device.uplink is not None and device.uplink.state == transports[0]
    await device.close()
    assert_exactly_once_oldest_first(service.db_url, seqs)


async def test_an_unknown_token_is_surfaced_and_nothing_is_lost(
    data_dir: Path, service: Service
) -> None:
    provision(service.db_url, "scr-1")
    device = await Device.open(device_config(data_dir, service.url, "wrong-token"), capture=None)
    await record(device, 2)
    uplink = device.uplink
    assert uplink is not None
    await eventually(lambda: _true(uplink.state == "unauthorized"))
    assert uplink.last_error is not None and "401" in uplink.last_error
    status = await device.status()
    assert status["queue_depth"] == 2 and status["transport"] == "unauthorized"
    await device.close(flush_timeout_s=0.2)
    assert impressions(service.db_url, "scr-1") == []


async def test_a_revoked_token_is_surfaced_as_bad_credentials(
    device: Device, service: Service
) -> None:
    await record(device, 1)
    await drained(device)
    subprocess.run(
        [sys.executable, "-m", "playproof", "devices", "revoke", "scr-1", "--db", service.db_url],
        check=True,
        capture_output=True,
        timeout=60,
    )
    uplink = device.uplink
    assert uplink is not None
    # The open stream stays up; the next connection is refused (close 4403 or HTTP 403).
    service.kill()
    service.start()
    await record(device, 1)
    await eventually(lambda: _true(uplink.state == "unauthorized"))
    assert uplink.last_error is not None and "revoked" in uplink.last_error
    assert (await device.journal.stats()).queue_depth == 1


async def test_evictions_are_counted_and_reported_in_the_next_status(
    data_dir: Path, db_url: str
) -> None:
    """A journal over its space evicts the oldest (young or not) and reports them exactly."""
    svc = Service(db_url)
    token = provision(db_url, "scr-1")
    # Room for about four records: the six oldest of ten make way.
    config = device_config(data_dir, svc.url, token, journal_queue_bytes=4 * 500)
    device = await Device.open(config, capture=None)
    try:
        await record(device, 10)
        stats = await device.journal.stats()
        assert [(r.first, r.last) for r in stats.unreported] == [(1, 6)]
        svc.start()
        await drained(device)

        async def reported() -> bool:
            return not await device.journal.unreported_evictions()

        await eventually(reported, what="the evictions to be reported")
    finally:
        await device.close(flush_timeout_s=0.5)
        svc.kill()
    assert [r["seq"] for r in impressions(db_url, "scr-1")] == [7, 8, 9, 10]
    assert query(db_url, "SELECT first_seq, last_seq FROM evictions") == [(1, 6)]
    assert query(db_url, "SELECT evicted_total FROM device_status") == [(6,)]


async def test_screenshots_are_uploaded_apart_from_their_records(
    data_dir: Path, service: Service, token: str
) -> None:
    picture = png(16, 16, (200, 10, 10))
    sha = hashlib.sha256(picture).hexdigest()
    config = device_config(data_dir, service.url, token)
    device = await Device.open(config, capture=FixedPicture(picture))
    play = await device.start(content(expected_ms=200))
    await asyncio.sleep(0.25)
    await play.end()
    await drained(device)

    async def uploaded() -> bool:
        rows = query(service.db_url, "SELECT sha256 FROM screenshots")
        return rows == [(sha,)]

    await eventually(uploaded, what="the screenshot upload")
    await device.close()
    [row] = impressions(service.db_url, "scr-1")
    assert row["screenshot_sha256"] == sha
    assert (data_dir / "screenshots" / "sent" / f"{sha}.png").exists()


async def test_an_unsynced_clock_far_off_is_corrected_by_the_service(
    data_dir: Path, service: Service, token: str
) -> None:
    """40 minutes fast and no NTP: without correction every record would be rejected."""
    steered = SteeredTime(wall_skew_s=40 * 60)
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)
    config = device_config(data_dir, service.url, token)
    device = await Device.open(config, capture=None, clock=clock)
    await eventually(lambda: _true(clock.source == "service"), what="the service's time")
    seqs = await record(device, 3)
    await drained(device)
    await device.close()
    rows = assert_exactly_once_oldest_first(service.db_url, seqs)
    for row in rows:
        assert abs(row["end_ts"] - now_ms()) < 60_000
        assert row["clock_offset_ms"] == pytest.approx(-40 * 60_000, abs=1_000)
        assert "clock_unsynced" in row["flags"]


async def test_status_messages_reach_the_service(device: Device, service: Service) -> None:
    await record(device, 2)
    await drained(device)
    assert device.uplink is not None
    await device.uplink.send_status()

    def latest() -> dict[str, Any]:
        rows = query(service.db_url, "SELECT payload FROM device_status")
        return json.loads(rows[0][0]) if rows else {}

    async def current() -> bool:
        return latest().get("queue_depth") == 0

    await eventually(current, what="a status with the drained queue")
    status = latest()
    assert status["device_id"] == "scr-1"
    assert status["journal_id"] == device.journal.journal_id
    assert status["version"] and status["evicted"] == 0 and status["evicted_ranges"] == []


async def test_a_play_ending_after_a_later_one_is_delivered_on_the_open_connection(
    device: Device, service: Service
) -> None:
    """A banner over the main item: the earlier-started play is sealed last and still goes out.

    It once waited for the next connection: the sender had read past its sequence.
    """
    main = await device.start(content(expected_ms=100, content_id="cnt-main"))
    banner = await device.start(content(expected_ms=50, content_id="cnt-banner"))
    banner_seq = (await banner.end()).seq
    await eventually(
        lambda: _true(any(r["seq"] == banner_seq for r in impressions(service.db_url, "scr-1"))),
        30,
        "the banner's play to arrive",
    )
    main_seq = (await main.end()).seq
    await drained(device)
    stored = {r["seq"]: r["content_id"] for r in impressions(service.db_url, "scr-1")}
    assert stored == {main_seq: "cnt-main", banner_seq: "cnt-banner"}
