"""Failover on a three-node JetStream cluster: nothing lost, nothing counted twice.

Real parts throughout: three `nats-server -js` processes routed into one
cluster (streams and consumers replicated three times), two `playproof serve
--pipeline` nodes behind TCP front doors (a load balancer's part: new
connections go to a live node), two `playproof load` processes, PostgreSQL,
and screens running the device SDK (journal, ledger, delivery by HTTP batches
with store-and-forward). Under load, one after another: the NATS node leading a
partition is killed with SIGKILL, then a loader, then an ingest node. Then
the screens drain, the surviving loader catches up, and the fleet's
reconciliation oracle compares every screen's ledger with PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from playproof.device import Content, Device, DeviceConfig, UplinkConfig
from playproof.fleet.reconcile import journal_files, read_ledgers, reconcile
from playproof.pipeline.jetstream import JetStream
from playproof.pipeline.loader import wait_loaded
from playproof.pipeline.settings import Settings, parse
from playproof.stores.postgres import PostgresStore
from tests.faults.proxy import FaultProxy
from tests.pipeline.conftest import pipeline_url
from tests.pipeline.processes import LoaderProcess
from tests.pipeline.servers import NatsCluster, require_nats_server
from tests.reliability import Tally
from tests.support import ServerProcess, provision

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

SCREENS = 12
PHASE_S = 5.0  # load between two kills


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    """Three routed nats-servers with JetStream, destroyed afterwards."""
    require_nats_server()
    made = NatsCluster()
    made.start()
    try:
        yield made
    finally:
        made.destroy()


async def leader_of(settings: Settings, partition: int) -> str:
    """The name of the server leading one partition's stream."""
    js = await JetStream.connect(settings, "probe")
    try:
        info = await js.js.stream_info(settings.stream(partition))
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader
    finally:
        await js.close()


async def screen(i: int, root: Path, url: str, token: str, stop: asyncio.Event) -> Device:
    """One screen playing short items back to back until `stop`; its device, still open."""
    # HTTP batches (store-and-forward): every request has its own deadline. Over the
    # stream, the device SDK does not give up on a frame whose node died once its
    # reader was already waiting (see the report on device/stream.py).
    uplink = UplinkConfig(
        server_url=url,
        token=token,
        transports=("http",),
        request_timeout_s=10.0,
        backoff_base_s=0.2,
        backoff_cap_s=2.0,
    )
    config = DeviceConfig(
        device_id=f"scr-{i}", store_id="store-1", data_dir=root / f"scr-{i}", uplink=uplink
    )
    device = await Device.open(config, capture=None)
    content = Content(
        campaign_id="cmp-1", ad_group_id="ag-1", content_id=f"cnt-{i % 4}", supplier_id="sup-1",
        expected_ms=60,
    )  # fmt: skip
    while not stop.is_set():
        async with device.play(content):
            await asyncio.sleep(0.06)
    return device


def kill_node(cluster: NatsCluster, name: str) -> None:
    """SIGKILL the nats-server of that name."""
    [node] = [n for n in cluster.nodes if n.name == name]
    node.kill()


async def test_killing_a_nats_node_a_loader_and_an_ingest_node_loses_and_doubles_nothing(
    cluster: NatsCluster, pg_url: str, tmp_path: Path, tally: Tally
) -> None:
    url = pipeline_url(cluster.hosts, replicas=3, partitions=3, batch=500, ack_wait="3s")
    settings = parse(url)
    tokens = [provision(pg_url, f"scr-{i}") for i in range(SCREENS)]
    nodes = [ServerProcess(pg_url, "--pipeline", url) for _ in range(2)]
    for node in nodes:
        node.start()
    doors = [FaultProxy("127.0.0.1", int(n.url.rsplit(":", 1)[1])).start() for n in nodes]
    loaders = [LoaderProcess(pg_url, url).start() for _ in range(2)]
    stop = asyncio.Event()
    try:
        playing = [
            asyncio.create_task(screen(i, tmp_path, doors[i % 2].url, tokens[i], stop))
            for i in range(SCREENS)
        ]
        await asyncio.sleep(PHASE_S)
        kill_node(cluster, await leader_of(settings, 0))
        await asyncio.sleep(PHASE_S)
        loaders[0].kill()
        await asyncio.sleep(PHASE_S)
        nodes[0].kill()
        # The load balancer notices: it resets the dead node's connections and sends
        # new ones to the live node.
        doors[0].set_mode("drop")
        doors[0].upstream = doors[1].upstream
        doors[0].set_mode("pass")
        await asyncio.sleep(PHASE_S)
        stop.set()
        devices = await asyncio.gather(*playing)
        flushed = await asyncio.gather(*(d.close(flush_timeout_s=60) for d in devices))
        assert all(flushed), "every screen delivered its queue"
        await wait_loaded(settings, 90)
    finally:
        stop.set()
        for loader in loaders:
            loader.kill()
        for node in nodes:
            node.kill()
        for door in doors:
            with contextlib.suppress(Exception):
                door.stop()

    views, errors = read_ledgers(journal_files(tmp_path))
    store = PostgresStore(pg_url)
    await store.open()
    try:
        result = await reconcile(store, views, errors)
    finally:
        await store.close()
    total = result.total
    tally.faults, tally.records = 3, total.recorded
    tally.lost, tally.doubled = total.lost, total.double
    counts = (total.lost, total.double, total.queued, result.errors)
    assert counts == (0, 0, 0, []), result.findings[:10]
    assert result.ok, result.findings[:10]
    assert total.accepted + sum(total.rejected.values()) == total.recorded > 200
    assert len(views) == SCREENS
