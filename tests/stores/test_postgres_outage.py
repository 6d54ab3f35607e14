"""PostgreSQL killed with SIGKILL mid-ingest: 503s, recovery without a restart, nothing lost.

These tests run a throwaway cluster of their own (initdb as the `postgres` OS
user, on a free port), since they kill it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect

from playproof.errors import StoreUnavailable
from playproof.stores.postgres import PostgresStore
from tests.reliability import Tally
from tests.stores.cluster import Cluster, missing_reason
from tests.stores.pipeline import batch, commit_one
from tests.support import IN_CI, ServerProcess, envelope, make_record, provision

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A running throwaway cluster, destroyed afterwards."""
    reason = missing_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"cannot start a throwaway PostgreSQL cluster: {reason}")
        pytest.skip(reason)
    made = Cluster().init()
    made.start()
    try:
        yield made
    finally:
        made.destroy()


async def test_a_store_answers_unavailable_while_the_database_is_down_then_recovers(
    cluster: Cluster, tmp_path: Path
) -> None:
    store = PostgresStore(cluster.url, tmp_path / "blobs")
    await store.open()
    try:
        assert await commit_one(store, batch([make_record(seq=1)])) == [(1, "accepted", "valid")]
        cluster.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.commit([batch([make_record(seq=2)])])
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert time.monotonic() - started < 20, "an outage must be answered, not waited out"
        cluster.start()
        acks = await _until_committed(store, batch([make_record(seq=2)]))
        assert acks in ([(2, "accepted", "valid")], [(2, "duplicate", None)])
        await store.ping()
        [journal] = await store.journals()
        assert (journal.high_water, journal.gaps) == (2, ())
    finally:
        await store.close()


async def _until_committed(store: PostgresStore, write: object, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await commit_one(store, write)  # type: ignore[arg-type]
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# --- a real server process ----------------------------------------------------------


@dataclass
class Seen:
    """What the devices saw: acknowledged keys, refusals, and when the last ack came."""

    acked: set[tuple[str, int]] = field(default_factory=set)
    unavailable: int = 0
    stream_errors: int = 0
    last_ack: float = 0.0

    def ack(self, device_id: str, acks: list[dict[str, object]]) -> None:
        for ack in acks:
            assert ack["result"] in ("accepted", "duplicate"), ack
            self.acked.add((device_id, int(str(ack["seq"]))))
        self.last_ack = time.monotonic()


async def http_device(
    url: str, device_id: str, token: str, seen: Seen, stop: asyncio.Event
) -> None:
    """Send batches of 50; a batch without an ack is sent again, unchanged, as a device would."""
    seq = 1
    records = [make_record(device_id=device_id, seq=s) for s in range(seq, seq + 50)]
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        while not stop.is_set():
            try:
                response = await http.post(
                    "/v1/impressions/batch", json=envelope(records, device_id)
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 503:
                seen.unavailable += 1
                await asyncio.sleep(0.1)
                continue
            assert response.status_code == 200, response.text
            seen.ack(device_id, response.json()["acks"])
            seq += 50
            records = [make_record(device_id=device_id, seq=s) for s in range(seq, seq + 50)]


async def stream_device(
    url: str, device_id: str, token: str, seen: Seen, stop: asyncio.Event
) -> None:
    """Send frames of 5 over one WebSocket; an error answer means send the frame again."""
    ws_url = url.replace("http://", "ws://") + "/v1/stream"
    seq = 1
    records = [make_record(device_id=device_id, seq=s) for s in range(seq, seq + 5)]
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        while not stop.is_set():
            await ws.send(json.dumps({"id": seq, **envelope(records, device_id)}))
            answer = json.loads(await ws.recv())
            assert answer["id"] == seq
            if "error" in answer:
                seen.stream_errors += 1
                await asyncio.sleep(0.1)
                continue
            seen.ack(device_id, answer["acks"])
            seq += 5
            records = [make_record(device_id=device_id, seq=s) for s in range(seq, seq + 5)]


async def healthz(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return (await http.get("/healthz")).status_code


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
) -> None:
    """Poll until `condition` holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if held if isinstance(held, bool) else await held:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def ride_out_a_crash(
    server: ServerProcess, cluster: Cluster, devices: list[tuple[str, str]]
) -> Seen:
    seen, stop = Seen(), asyncio.Event()
    kinds = [http_device, stream_device]
    tasks = [
        asyncio.create_task(kinds[i % 2](server.url, d, t, seen, stop))
        for i, (d, t) in enumerate(devices)
    ]
    try:
        await wait_for(lambda: len(seen.acked) > 500, 30, "acks before the crash")
        cluster.kill()
        await wait_for(lambda: seen.unavailable > 0 and seen.stream_errors > 0, 30, "503s")
        assert await healthz(server.url) == 503
        during = len(seen.acked)
        await asyncio.sleep(1.0)
        assert len(seen.acked) == during, "nothing may be acknowledged while the database is down"
        cluster.start()
        await wait_for(lambda: _healthy(server.url), 60, "/healthz to recover")
        await wait_for(lambda: len(seen.acked) > during + 500, 60, "acks after recovery")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return seen


async def _healthy(url: str) -> bool:
    return await healthz(url) == 200


def test_serve_survives_a_database_crash_without_losing_an_acknowledged_record(
    cluster: Cluster, tmp_path: Path, tally: Tally
) -> None:
    devices = [(f"scr-crash-{i}", provision(cluster.url, f"scr-crash-{i}")) for i in range(4)]
    server = ServerProcess(cluster.url, env={"PLAYPROOF_BLOB_DIR": str(tmp_path / "blobs")})
    server.start()
    try:
        pid = server.proc.pid if server.proc else None
        seen = asyncio.run(ride_out_a_crash(server, cluster, devices))
        assert server.proc is not None and server.proc.poll() is None and server.proc.pid == pid
    finally:
        server.kill()
    with psycopg.connect(cluster.url) as conn:
        stored = set(conn.execute("SELECT device_id, seq FROM impressions").fetchall())
        keys = conn.execute("SELECT count(*) FROM impression_keys").fetchone()
    missing = seen.acked - stored
    tally.faults, tally.records = 1, len(stored | seen.acked)
    tally.lost, tally.doubled = len(missing), abs(keys[0] - len(stored))
    assert not missing, f"{len(missing)} acknowledged records are not in the database"
    assert keys == (len(stored),)
