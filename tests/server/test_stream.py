"""The WebSocket stream of PROTOCOL.md section 3 against a real server on SQLite."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from itertools import count
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import ServerProcess, bearer, envelope, make_record, now_ms, provision

_ids = count(1)


@pytest.fixture
def device(server: ServerProcess) -> tuple[str, str]:
    """A freshly registered device of its own: (device_id, token)."""
    device_id = f"scr-ws-{next(_ids)}"
    return device_id, provision(server.db_url, device_id, "store-1")


async def recv_json(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), "the service answers with text frames"
    return dict(json.loads(message))


def frame(frame_id: int, device_id: str, seqs: list[int]) -> str:
    records = [make_record(device_id=device_id, seq=s) for s in seqs]
    return json.dumps({"id": frame_id, **envelope(records, device_id)})


def stored(server: ServerProcess, device_id: str) -> list[int]:
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "SELECT seq FROM impressions WHERE device_id = ? ORDER BY seq", (device_id,)
        )
        return [r[0] for r in rows]


async def test_pipelined_frames_are_each_answered_by_id_after_commit(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        for i in range(20):
            await ws.send(frame(100 + i, device_id, [i * 3 + 1, i * 3 + 2, i * 3 + 3]))
        answers = [await recv_json(ws) for _ in range(20)]
    assert sorted(a["id"] for a in answers) == list(range(100, 120))
    for answer in answers:
        i = answer["id"] - 100
        assert [a["seq"] for a in answer["acks"]] == [i * 3 + 1, i * 3 + 2, i * 3 + 3]
        assert {a["result"] for a in answer["acks"]} == {"accepted"}
    assert stored(server, device_id) == list(range(1, 61))


async def test_a_resent_frame_gets_duplicates(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        once = json.loads(frame(1, device_id, [1]))
        await ws.send(json.dumps(once))
        first = await recv_json(ws)
        await ws.send(json.dumps({**once, "id": 2}))
        second = await recv_json(ws)
    assert first["acks"][0]["result"] == "accepted"
    assert second == {**second, "id": 2, "acks": [{"seq": 1, "result": "duplicate"}]}


@pytest.mark.parametrize(
    ("text", "answer_id", "fragment"),
    [
        ("not json at all", None, "JSON"),
        ('{"id": 7, "device_id": "x"}', 7, "sent_at"),
        (
            '{"id": 8, "sent_at": 1, "impressions": [], "device_id": "d", "surplus": 1}',
            8,
            "surplus",
        ),
        ('{"id": "nine", "device_id": "d", "sent_at": 1, "impressions": []}', None, "id"),
        ("[]", None, "object"),
    ],
)
async def test_a_malformed_frame_gets_an_error_and_the_connection_stays_open(
    server: ServerProcess, device: tuple[str, str], text: str, answer_id: int | None, fragment: str
) -> None:
    device_id, token = device
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        await ws.send(text)
        error = await recv_json(ws)
        assert error["id"] == answer_id
        assert fragment in error["error"]
        await ws.send(frame(9, device_id, [1]))
        assert (await recv_json(ws))["acks"][0]["result"] == "accepted"


async def test_a_binary_frame_gets_an_error(server: ServerProcess, device: tuple[str, str]) -> None:
    _, token = device
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        await ws.send(b'{"id": 1}')
        error = await recv_json(ws)
    assert error["id"] is None
    assert "text" in error["error"]


async def test_a_frame_for_another_device_is_refused_and_nothing_stored(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    _, token = device
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        await ws.send(frame(4, "scr-victim-ws", [1]))
        error = await recv_json(ws)
    assert error["id"] == 4
    assert "scr-victim-ws" in error["error"]
    assert stored(server, "scr-victim-ws") == []


async def test_status_frames_are_stored_and_not_answered(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    status = {
        "type": "status",
        "device_id": device_id,
        "sent_at": now_ms(),
        "queue_depth": 42,
        "drift_ppm": 1.5,
    }
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        await ws.send(json.dumps(status))
        await ws.send(frame(5, device_id, [1]))
        answer = await recv_json(ws)  # the first answer is the batch's: the status got none
    assert answer["id"] == 5
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as conn:
        payload = conn.execute(
            "SELECT payload FROM device_status WHERE device_id = ?", (device_id,)
        ).fetchone()
    assert json.loads(payload[0])["queue_depth"] == 42


@pytest.mark.parametrize(("token", "code"), [(None, 4401), ("ppd_unknown", 4401)])
async def test_bad_credentials_close_with_4401(
    server: ServerProcess, token: str | None, code: int
) -> None:
    extra = bearer(token) if token else {}
    async with connect(server.stream_url, additional_headers=extra) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


async def test_a_revoked_token_closes_with_4403(server: ServerProcess) -> None:
    from playproof.server import admin

    token = provision(server.db_url, "scr-ws-revoked", "store-1")
    async with admin.opened(server.db_url) as store:
        await admin.revoke_device(store, "scr-ws-revoked")
    await asyncio.sleep(2.1)  # the service caches token lookups for 2 s
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_many_connections_at_once_are_each_acknowledged(server: ServerProcess) -> None:
    devices = [
        (f"scr-ws-many-{i}", provision(server.db_url, f"scr-ws-many-{i}")) for i in range(30)
    ]

    async def one(device_id: str, token: str) -> list[str]:
        async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
            for i in range(5):
                await ws.send(frame(i, device_id, [i + 1]))
            answers = [await recv_json(ws) for _ in range(5)]
        return [a["acks"][0]["result"] for a in answers]

    results = await asyncio.gather(*(one(d, t) for d, t in devices))
    assert all(r == ["accepted"] * 5 for r in results)


async def _refused_on_open_stream(server: ServerProcess, device_id: str, action: str) -> int:
    """Open a stream, commit a frame, change the token, then send another frame."""
    from playproof.server import admin

    token = provision(server.db_url, device_id, "store-1")
    async with connect(server.stream_url, additional_headers=bearer(token)) as ws:
        await ws.send(frame(1, device_id, [1]))
        assert (await recv_json(ws))["acks"][0]["result"] == "accepted"
        async with admin.opened(server.db_url) as store:
            if action == "revoke":
                await admin.revoke_device(store, device_id)
            else:
                await admin.rotate_device(store, device_id)
        await asyncio.sleep(2.1)  # the service caches token lookups for 2 s
        await ws.send(frame(2, device_id, [2]))
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert stored(server, device_id) == [1], "the frame after the change is not committed"
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_a_revocation_reaches_a_stream_opened_before_it(server: ServerProcess) -> None:
    """The next frame after the cache time is refused and the connection closed 4403."""
    assert await _refused_on_open_stream(server, "scr-ws-revoked-open", "revoke") == 4403


async def test_a_rotation_reaches_a_stream_opened_before_it(server: ServerProcess) -> None:
    """The old token stops working on an open connection: closed 4401."""
    assert await _refused_on_open_stream(server, "scr-ws-rotated-open", "rotate") == 4401
