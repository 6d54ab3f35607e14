"""Backpressure: a flood of 1 MiB frames cannot take the service's memory or lock a screen out.

200 stream connections (50 hostile tokens, 4 connections each, the default cap)
push 1 MiB frames as fast as the service reads them, while a store stall (another
writer holding SQLite's lock for a few seconds, as a long checkpoint or a slow
disk would) keeps anything from being committed. The service's resident memory,
read from /proc, must stay under the ceiling docs/operators.md gives for the
default limits, and a well-behaved screen on the real SDK must get every play
committed, never once told that the service is overloaded: the backlog keeps its
last eighth for devices holding little (server/backlog.py). Before the backlog was
bounded, the held frames grew by hundreds of MiB a second until the stall ended;
before the reserve, the flood filled it to its last KiB and the screen's frames
were refused for as long as the flood had them so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from playproof.device import Device
from playproof.protocol import MAX_BATCH_BYTES, encode
from tests.device.helpers import content, device_config, eventually, impressions
from tests.support import (
    ServerProcess,
    client,
    envelope,
    make_record,
    now_ms,
    provision,
    store_stall,
)

FLOOD_DEVICES = 50
PER_DEVICE = 4  # the default stream_connections_per_device
STALL_S = 6.0  # under SQLite's 10 s busy timeout: commits wait rather than fail
PLAYS = 12
MIB = 1024 * 1024
# docs/operators.md, "Limits": 128 MiB + 3 x backlog_bytes + 4 MiB a stream connection
# sending 1 MiB frames; with the defaults and these 201 connections, 1124 MiB.
CEILING_BYTES = (128 + 3 * 64 + 4 * (FLOOD_DEVICES * PER_DEVICE + 1)) * MIB


def rss(pid: int) -> tuple[int, int]:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return _kib(fields["VmRSS"]), _kib(fields["VmHWM"])


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def flood_frame(device_id: str) -> bytes:
    """A valid frame of one record, padded with JSON whitespace to just under 1 MiB."""
    record = json.loads(encode(make_record(device_id=device_id, seq=1)))
    head = json.dumps(
        {"id": 1, "device_id": device_id, "sent_at": now_ms(), "impressions": [record]}
    )
    return (head[:-1] + " " * (MAX_BATCH_BYTES - len(head) - 16) + "}").encode()


class Watch:
    """Samples the server's memory in a thread; stops the flood if it passes the ceiling."""

    def __init__(self, pid: int, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        self.pid, self.stop, self.loop = pid, stop, loop
        self.peak = 0
        self.over = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            now, self.peak = rss(self.pid)
            if now > CEILING_BYTES and not self.over:
                # Past the ceiling the assertion has failed already: spare the machine.
                self.over = True
                self.loop.call_soon_threadsafe(self.stop.set)


async def flood(url: str, token: str, frame: bytes, seen: Counter[str]) -> None:
    """One hostile connection: frames as fast as the service reads them, until cancelled."""
    headers = {"Authorization": f"Bearer {token}"}
    ws = await connect(url, additional_headers=headers, max_size=None)
    reader = asyncio.create_task(_drain(ws, seen))
    try:
        while True:
            await ws.send(frame, text=True)
            seen["sent"] += 1
    finally:
        reader.cancel()
        # No closing handshake: the service may be leaving this connection unread.
        ws.transport.abort()


async def _drain(ws: ClientConnection, seen: Counter[str]) -> None:
    async for message in ws:
        answer = json.loads(message)
        if "acks" in answer:
            seen["acked"] += 1
        elif answer.get("retry_after_ms") is not None:
            seen["retry"] += 1
        else:
            seen["error"] += 1


@pytest.fixture
def target(db_url: str) -> Iterator[tuple[ServerProcess, list[str], str]]:
    """A server with the default limits, the hostile tokens and a good device's token."""
    tokens = [provision(db_url, f"scr-flood-{i}") for i in range(FLOOD_DEVICES)]
    good = provision(db_url, "scr-good")
    with ServerProcess(db_url) as proc:
        yield proc, tokens, good


async def test_200_connections_of_1_mib_frames_leave_memory_bounded_and_a_screen_committing(
    target: tuple[ServerProcess, list[str], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, tokens, good = target
    assert server.proc is not None
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    stop, seen = asyncio.Event(), Counter[str]()
    frames = [flood_frame(f"scr-flood-{i}") for i in range(FLOOD_DEVICES)]
    device = await Device.open(
        device_config(tmp_path / "good", server.url, good, device_id="scr-good"), capture=None
    )
    with Watch(server.proc.pid, stop, asyncio.get_running_loop()) as watch:
        flooders = [
            asyncio.create_task(flood(url, tokens[i], frames[i], seen))
            for i in range(FLOOD_DEVICES)
            for _ in range(PER_DEVICE)
        ]
        with store_stall(server.db_url):
            seqs = [await _play(device) for _ in range(PLAYS // 2)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STALL_S)  # or until past the ceiling
        try:
            seqs += [await _play(device) for _ in range(PLAYS // 2)]
            await eventually(lambda: _committed(server.db_url, seqs), 90, "the good screen's plays")
        finally:
            for task in flooders:
                task.cancel()
            await asyncio.gather(*flooders, return_exceptions=True)
            await device.close(flush_timeout_s=0.5)
    assert not watch.over and watch.peak <= CEILING_BYTES, (
        f"peak RSS {watch.peak / MIB:.0f} MiB, ceiling {CEILING_BYTES / MIB:.0f} MiB"
    )
    assert seen["retry"] > 0, f"the flood must have met the bound: {seen}"
    assert [r["seq"] for r in impressions(server.db_url, "scr-good")] == seqs
    refused = [r.getMessage() for r in caplog.records if "overloaded" in r.getMessage()]
    assert not refused, f"the screen was refused for the flood: {refused[:3]}"


async def _play(device: Device) -> int:
    play = await device.start(content(expected_ms=100))
    await asyncio.sleep(0.1)
    return (await play.end()).seq


async def _committed(db_url: str, seqs: list[int]) -> bool:
    return [r["seq"] for r in impressions(db_url, "scr-good")] == seqs


def _post(url: str, token: str, body: dict[str, object]) -> httpx.Response:
    with client(url, token) as http:
        return http.post("/v1/impressions/batch", json=body)


def test_past_the_backlog_a_batch_gets_503_with_retry_after_and_is_kept_when_sent_again(
    db_url: str,
) -> None:
    """Six 1000-record batches while the store stalls, the backlog holding two batches'
    worth: the first waits for its commit; the rest are refused at once, nothing of them
    stored, and each is committed when sent again."""
    devices = [f"scr-http-{i}" for i in range(6)]
    tokens = {d: provision(db_url, d) for d in devices}
    bodies = {
        d: envelope([make_record(device_id=d, seq=s) for s in range(1, 1001)], d) for d in devices
    }
    limits = ("--limit", "backlog_records=2000", "--limit", f"backlog_bytes={4 * MIB}")
    with ServerProcess(db_url, *limits) as server, ThreadPoolExecutor(len(devices)) as pool:
        with store_stall(db_url):
            pending = {pool.submit(_post, server.url, tokens[d], bodies[d]): d for d in devices}
            answered: set[Future[httpx.Response]] = set()
            while len(answered) < len(devices) - 1:
                done, _ = wait(set(pending) - answered, 30, FIRST_COMPLETED)
                assert done, "the refusals come at once, while the store still stalls"
                answered |= done
        answers = {d: f.result() for f, d in pending.items()}
        refused = [d for d, r in answers.items() if r.status_code == 503]
        assert len(refused) == len(devices) - 1
        for device in refused:
            response = answers[device]
            assert int(response.headers["retry-after"]) >= 1
            assert "overloaded" in response.json()["error"]
            assert impressions(db_url, device) == []
        for device in refused:
            answers[device] = _post(server.url, tokens[device], bodies[device])
    assert all(r.status_code == 200 for r in answers.values())
    for device in devices:
        assert [a["result"] for a in answers[device].json()["acks"]] == ["accepted"] * 1000
        assert len(impressions(db_url, device)) == 1000
