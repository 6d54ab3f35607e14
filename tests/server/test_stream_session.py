"""The stream session's own bookkeeping (issue 17 replaced its semaphore, watchdog task and
send lock): at most MAX_IN_FLIGHT frames of a connection are taken in before their answers,
every frame is answered once, and an idle connection is closed by its timer.

All real: `playproof serve` in its own process on a SQLite file, a `websockets` client, and
a second SQLite connection holding the database's write lock (as a long checkpoint or a
slow disk would) so that the service's commits wait. What is asserted is counted (records
held, answers, pongs, rows, close codes), never timed. The hold-back of a refused
connection is a pure function (`hold_back_s`), tested as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from playproof.server.stream import CLOSE_GOING_AWAY, MAX_IN_FLIGHT, MAX_QUIET_S, hold_back_s
from tests.support import ServerProcess, bearer, envelope, make_record, provision, store_stall

FRAMES = 2 * MAX_IN_FLIGHT + 10
# Each frame is padded with this many bytes of JSON whitespace, so that the frames past the
# bound (some 1.2 MB) cannot all reach the service in the read that brought frame
# MAX_IN_FLIGHT + 1 (uvloop reads at most 250 KB at a time, and uvicorn pauses reading while
# the app has not taken what it read): the ping sent after them stays unread.
PAD = 16 * 1024
# How long the ping sent after the frames is given to come back while the commits wait;
# a service without the bound answers it meanwhile. Well under SQLite's busy timeout (10 s):
# the held commits wait rather than fail.
HOLD_S = 2.0
IDLE_S = 1.5
BACKLOG = re.compile(r"^playproof_backlog_records (\S+)$", re.MULTILINE)


def frame(frame_id: int, device_id: str, pad: int = 0) -> str:
    """A version-1 frame of one sealed record (seq = frame id), padded with `pad` spaces."""
    body = json.dumps(
        {"id": frame_id, **envelope([make_record(device_id=device_id, seq=frame_id)], device_id)}
    )
    return body[:-1] + " " * pad + "}"


async def backlog_records(scrape: httpx.AsyncClient) -> int:
    """Records the service holds between reading a frame and answering it, from /metrics."""
    answer = await scrape.get("/metrics")
    assert answer.status_code == 200, answer.text
    found = BACKLOG.search(answer.text)
    assert found, answer.text
    return int(float(found.group(1)))


def stored(db_url: str, device_id: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
        rows = conn.execute(
            "SELECT seq FROM impressions WHERE device_id = ? ORDER BY seq", (device_id,)
        )
        return [row[0] for row in rows]


class Answers:
    """Every frame the service sends on one connection, read as it arrives until it closes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.got: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self._arrived = asyncio.Event()
        self.reading = asyncio.create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            while True:
                message = await ws.recv()
                assert isinstance(message, str), "the service answers with text frames"
                self.got.append(json.loads(message))
                self._arrived.set()
        except ConnectionClosed as exc:
            self.closed = exc

    async def until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> None:
        """Wait until the answers so far are `done` (TimeoutError if they never are)."""
        async with asyncio.timeout(timeout):
            while not done(self.got):
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
def serving(db_url: str) -> Iterator[ServerProcess]:
    """A server of its own (its SQLite file is held locked), with an unauthenticated
    /metrics listener and a rate no burst of these frames reaches."""
    limits = ("--limit", "device_rate=1000", "--limit", "device_burst=1000")
    with ServerProcess(db_url, "--metrics-listen", "127.0.0.1:0", *limits) as proc:
        yield proc


async def test_at_most_max_in_flight_frames_are_taken_in_before_answers_and_each_is_answered_once(
    serving: ServerProcess,
) -> None:
    """While the commits wait on a held SQLite lock, 2 x MAX_IN_FLIGHT + 10 frames sent at
    once leave the service holding exactly MAX_IN_FLIGHT frames' records, no frame
    answered, and the socket unread (a ping sent after the frames gets no pong); once the
    lock is released, every frame id is answered exactly once, accepted, and the database
    holds exactly those records.

    Without the bound the service takes in every frame: it holds more records than
    MAX_IN_FLIGHT and reads on to the ping, whose pong then comes while the lock is held.
    """
    device_id = "scr-session-in-flight"
    token = provision(serving.db_url, device_id)
    frames = [frame(i, device_id, PAD) for i in range(1, FRAMES + 1)]
    pong = asyncio.Event()

    async def send_all(ws: ClientConnection) -> None:
        # Without waiting for answers; past the bound the service stops reading, and these
        # sends wait for room in the socket when the socket's buffers are full.
        for text in frames:
            await ws.send(text)
        await (await ws.ping())
        pong.set()

    async with (
        httpx.AsyncClient(base_url=serving.metrics_url, timeout=10) as scrape,
        connect(serving.stream_url, additional_headers=bearer(token)) as ws,
    ):
        answers = Answers(ws)
        with store_stall(serving.db_url):
            sending = asyncio.create_task(send_all(ws))
            async with asyncio.timeout(30):
                while (held := await backlog_records(scrape)) < MAX_IN_FLIGHT:
                    await asyncio.sleep(0.05)
            # Time for a service without the bound to read on; with it, nothing comes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pong.wait(), HOLD_S)
            held = await backlog_records(scrape)
            answered_while_held = len(answers.got)
            pong_while_held = pong.is_set()
        assert held == MAX_IN_FLIGHT, "records of frames taken in before any answer"
        assert answered_while_held == 0, "the lock held every commit"
        assert not pong_while_held, "the service stopped reading the socket past the bound"
        await answers.until(lambda got: len(got) >= FRAMES)
        await asyncio.wait_for(sending, 30)
        # One frame more, answered after it was read behind all the others: any doubled
        # answer of theirs would have been sent by then.
        await ws.send(frame(FRAMES + 1, device_id))
        await answers.until(lambda got: any(a["id"] == FRAMES + 1 for a in got))
        after = await backlog_records(scrape)
    await asyncio.wait_for(answers.reading, 30)
    counts = Counter(answer["id"] for answer in answers.got)
    assert counts == Counter(range(1, FRAMES + 2)), "every frame answered exactly once"
    for answer in answers.got:
        assert [(a["seq"], a["result"]) for a in answer["acks"]] == [(answer["id"], "accepted")]
    assert stored(serving.db_url, device_id) == list(range(1, FRAMES + 2))
    assert after == 0, "an answered frame holds nothing"


async def test_an_idle_connection_is_closed_going_away_by_its_timer(db_url: str) -> None:
    """A connection that sends one frame and then nothing is answered, then closed by the
    service with CLOSE_GOING_AWAY (1001) once stream_idle_s passes without a frame."""
    device_id = "scr-session-idle"
    token = provision(db_url, device_id)
    with ServerProcess(db_url, "--limit", f"stream_idle_s={IDLE_S}") as server:
        async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
            answers = Answers(ws)
            await ws.send(frame(1, device_id))
            # Never closed without the timer: the client's keepalive pings are answered.
            await asyncio.wait_for(answers.reading, 20 * IDLE_S)
    assert [a["id"] for a in answers.got] == [1]
    assert answers.got[0]["acks"][0]["result"] == "accepted"
    assert answers.closed is not None
    assert answers.closed.rcvd is not None, "the service closed the connection"
    assert answers.closed.rcvd.code == CLOSE_GOING_AWAY
    assert "idle" in answers.closed.rcvd.reason
    assert stored(db_url, device_id) == [1]


@settings(max_examples=200, deadline=None)
@given(st.floats(0.001, 60.0), st.integers(0, 16), st.floats(1.0, 1.5))
def test_a_refused_connection_is_left_unread_at_least_the_wait_doubled_at_most_half_again(
    retry_after_s: float, strikes: int, spread: float
) -> None:
    """The hold-back is the wait asked, doubled at each refusal in a row up to MAX_QUIET_S,
    then spread over up to half as long again; never shorter than the wait asked."""
    base = min(MAX_QUIET_S, retry_after_s * 2.0**strikes)
    quiet = hold_back_s(retry_after_s, strikes, lambda low, high: spread)
    assert quiet == pytest.approx(base * spread)
    assert min(retry_after_s, MAX_QUIET_S) <= quiet <= 1.5 * MAX_QUIET_S


def test_connections_refused_together_are_not_all_read_again_together() -> None:
    """Refused at the same moment with the same wait, 200 connections get spread-out
    hold-backs (at the cap too), not one instant at which all are read again."""
    for strikes in (0, 4, 16):
        quiets = {hold_back_s(1.0, strikes) for _ in range(200)}
        assert len(quiets) > 150
        assert max(quiets) - min(quiets) > 0.3 * min(quiets)
