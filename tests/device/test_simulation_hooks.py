"""The SDK's hooks for the fleet simulator, against a real service: a crash and a cut network.

`Device.abandon` stops a device as a crash would (nothing ended, nothing
flushed); `Uplink.set_offline` cuts its network and gives it back. Both exist
for simulations; what they leave must be what the real faults leave.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from playproof.device import Device
from tests.device.helpers import Service, content, device_config, eventually, impressions
from tests.support import provision


async def test_an_abandoned_device_leaves_its_play_open_and_the_next_start_closes_it(
    data_dir: Path,
) -> None:
    config = device_config(data_dir, checkpoint_s=0.05)
    device = await Device.open(config, capture=None)
    done = await device.start(content())
    await done.end("completed")
    await device.start(content())  # playing when it crashes
    await asyncio.sleep(0.2)  # a checkpoint or two
    await device.abandon()
    again = await Device.open(config, capture=None)
    [restart] = again.recovered
    assert (restart.seq, restart.end_reason) == (2, "device_restart")
    assert restart.duration_ms > 0, "the last checkpoint's duration"
    follow = await again.start(content())
    assert follow.seq == 3, "the sequence resumes"
    await follow.end("completed")
    ledger = await again.journal.ledger()
    assert [(r.seq, r.end_reason) for r in ledger.rows] == [
        (1, "completed"),
        (2, "device_restart"),
        (3, "completed"),
    ]
    await again.close(flush_timeout_s=0)


async def test_a_cut_network_queues_records_and_they_drain_when_it_returns(
    data_dir: Path, service: Service
) -> None:
    token = provision(service.db_url, "scr-1")
    device = await Device.open(device_config(data_dir, service.url, token), capture=None)
    assert device.uplink is not None
    uplink = device.uplink
    await eventually(lambda: _true(uplink.state == "stream"), what="the stream")
    uplink.set_offline(True)
    await eventually(lambda: _true(uplink.state == "offline"), what="the cut to show")
    for _ in range(5):
        await (await device.start(content(expected_ms=100))).end()
    await asyncio.sleep(0.3)
    assert (await device.journal.stats()).queue_depth == 5
    assert impressions(service.db_url, "scr-1") == []
    uplink.set_offline(False)

    async def drained() -> bool:
        return (await device.journal.stats()).queue_depth == 0

    await eventually(drained, what="the backlog to drain")
    stored = impressions(service.db_url, "scr-1")
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5]
    outcomes = [r.outcome for r in (await device.journal.ledger()).rows]
    assert outcomes == [f"accepted:{r['status']}" for r in stored]
    await device.close(flush_timeout_s=1)


async def _true(value: bool) -> bool:
    return value
