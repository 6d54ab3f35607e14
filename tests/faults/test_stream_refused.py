"""A network that refuses WebSockets: every play arrives over HTTP, then over the stream.

The reference player (`Player`, on the device SDK with its journal on a real SQLite
file) delivers to a real `playproof serve` through the HTTP-aware proxy of
`upgrade_proxy.py`, which answers every WebSocket upgrade `403 Forbidden` and passes
plain HTTP, as a shop's firewall might. A 403 instead of an upgrade is the network,
not the credentials (the service says those by closing an accepted upgrade), so the
device must fall back to HTTP batches and deliver every play, then take the stream
again once the proxy lets upgrades through, with no play sent by HTTP after that.
Waits are bounded polls for conditions; nothing is timed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from playproof.device import Device
from playproof.device.player import Player, Playlist, PlaylistItem
from tests.device.helpers import device_config, eventually, impressions
from tests.faults.upgrade_proxy import UpgradeProxy
from tests.support import ServerProcess, provision

DEVICE = "scr-no-ws"
BATCH = "POST /v1/impressions/batch"
STREAM = "GET /v1/stream"
PLAYLIST = Playlist(
    items=[
        PlaylistItem(
            campaign_id="cmp-1",
            ad_group_id="ag-1",
            content_id=f"cnt-{i}",
            supplier_id="sup-1",
            duration_ms=100,
        )
        for i in range(3)
    ]
)
WAIT_S = 60.0  # a deadline for a condition, not a speed


@pytest.fixture
def proxy(db_url: str) -> Iterator[UpgradeProxy]:
    with ServerProcess(db_url) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with UpgradeProxy(host, int(port)) as proxied:
            yield proxied


@pytest.fixture
async def device(tmp_path: Path, db_url: str, proxy: UpgradeProxy) -> AsyncIterator[Device]:
    token = provision(db_url, DEVICE)
    # Quick retries (device_config), and the stream tried again every second.
    config = device_config(
        tmp_path / "device", proxy.url, token, device_id=DEVICE, stream_retry_s=1.0
    )
    opened = await Device.open(config, capture=None)
    yield opened
    await opened.close(flush_timeout_s=1.0)


async def play_until(player: Player, plays: int) -> None:
    """Play the playlist until `plays` plays in all have been recorded."""
    await player.run(asyncio.Event(), max_plays=plays)


async def delivered(device: Device, db_url: str, plays: int) -> None:
    """Wait until the service holds plays 1..`plays`, each once, and the journal is empty."""

    async def done() -> bool:
        seqs = [row["seq"] for row in impressions(db_url, DEVICE)]
        return seqs == list(range(1, plays + 1)) and (await device.journal.stats()).queue_depth == 0

    await eventually(done, WAIT_S, f"plays 1..{plays} delivered, each once")


async def test_with_the_stream_refused_every_play_arrives_over_http_then_over_the_stream(
    device: Device, proxy: UpgradeProxy, db_url: str
) -> None:
    uplink = device.uplink
    assert uplink is not None
    player = Player(device, PLAYLIST, rng=random.Random(5))

    await play_until(player, 6)
    await delivered(device, db_url, 6)
    # No upgrade ever got through: HTTP carried every play, and the token was not doubted.
    assert proxy.upgraded == 0 and proxy.refused > 0, proxy.requests
    assert proxy.requests[BATCH] > 0 and uplink.state == "http", (uplink.state, uplink.last_error)

    proxy.allow()
    await eventually(lambda: _true(uplink.state == "stream"), WAIT_S, "the stream back")
    by_http = proxy.requests[BATCH]
    await play_until(player, 12)
    await delivered(device, db_url, 12)
    assert proxy.upgraded > 0 and uplink.state == "stream"
    assert proxy.requests[BATCH] == by_http, "plays 7..12 went by the stream alone"


async def _true(value: bool) -> bool:
    return value
