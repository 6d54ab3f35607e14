"""SIGKILL under load: everything the service acknowledged is in the database after restart."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from tests.support import ServerProcess, envelope, make_record, provision

CLIENTS = 6
BATCH = 200


async def http_client(
    url: str, device_id: str, token: str, acked: set[tuple[str, int]], first_seq: int
) -> None:
    """Send batches until the server dies; remember every seq acknowledged accepted or duplicate."""
    seq = first_seq
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as http:
        while True:
            records = [make_record(device_id=device_id, seq=s) for s in range(seq, seq + BATCH)]
            try:
                response = await http.post(
                    "/v1/impressions/batch", json=envelope(records, device_id)
                )
            except httpx.HTTPError:
                return
            if response.status_code != 200:
                return
            for ack in response.json()["acks"]:
                assert ack["result"] in ("accepted", "duplicate"), ack
                acked.add((device_id, ack["seq"]))
            seq += BATCH


async def stream_client(
    url: str, device_id: str, token: str, acked: set[tuple[str, int]], first_seq: int
) -> None:
    """Pipeline 1-record frames until the server dies; remember what was acknowledged."""
    ws_url = url.replace("http://", "ws://") + "/v1/stream"
    try:
        async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:

            async def reader() -> None:
                async for message in ws:
                    for ack in json.loads(message)["acks"]:
                        acked.add((device_id, ack["seq"]))

            reading = asyncio.create_task(reader())
            for seq in range(first_seq, first_seq + 1_000_000):
                records = [make_record(device_id=device_id, seq=seq)]
                await ws.send(json.dumps({"id": seq, **envelope(records, device_id)}))
                await asyncio.sleep(0.001)
            await reading
    except (WebSocketException, OSError):
        return


async def load_until_killed(
    server: ServerProcess, devices: list[tuple[str, str]], first_seq: int
) -> set[tuple[str, int]]:
    acked: set[tuple[str, int]] = set()
    tasks = [
        asyncio.create_task(
            (http_client if i % 2 else stream_client)(server.url, d, t, acked, first_seq)
        )
        for i, (d, t) in enumerate(devices)
    ]
    await asyncio.sleep(random.uniform(0.5, 1.5))
    server.kill()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return acked


def test_every_acknowledged_record_survives_sigkill(db_url: str) -> None:
    devices = [(f"scr-kill-{i}", provision(db_url, f"scr-kill-{i}")) for i in range(CLIENTS)]
    acked: set[tuple[str, int]] = set()
    for round_ in range(3):
        server = ServerProcess(db_url)
        server.start()
        acked |= asyncio.run(load_until_killed(server, devices, first_seq=1 + round_ * 1_000_000))
    assert len(acked) > 100, "the load must have been acknowledged before the kill"
    server = ServerProcess(db_url)
    with server:
        time.sleep(0.2)
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        stored = set(conn.execute("SELECT device_id, seq FROM impressions"))
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    assert integrity == "ok"
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged records are not in the database"
