"""Limits: rate, stream connections, idle streams and slow bodies cannot hold the service."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import ServerProcess, client, envelope, make_record, provision


@pytest.fixture(scope="module")
def tight(shared_db: str) -> Iterator[ServerProcess]:
    """A server with small limits, so that tests reach them quickly."""
    limits = [
        "device_rate=2",
        "device_burst=3",
        "stream_connections_per_device=2",
        "stream_idle_s=1.5",
        "body_timeout_s=1",
    ]
    args = [arg for limit in limits for arg in ("--limit", limit)]
    with ServerProcess(shared_db, *args) as proc:
        yield proc


def test_a_device_past_its_rate_gets_429_with_retry_after(tight: ServerProcess) -> None:
    token = provision(tight.db_url, "scr-rate")
    with client(tight.url, token) as http:
        codes = [
            http.post("/v1/impressions/batch", json=envelope([], "scr-rate")) for _ in range(6)
        ]
        other = provision(tight.db_url, "scr-rate-other")
        unaffected = http.post(
            "/v1/impressions/batch",
            json=envelope([], "scr-rate-other"),
            headers={"Authorization": f"Bearer {other}"},
        )
    statuses = [r.status_code for r in codes]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    limited = next(r for r in codes if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert "requests a second" in limited.json()["error"]
    assert unaffected.status_code == 200
    time.sleep(1.0)  # the bucket refills
    with client(tight.url, token) as http:
        assert http.post("/v1/impressions/batch", json=envelope([], "scr-rate")).status_code == 200


@pytest.fixture(scope="module")
def crowded(shared_db: str) -> Iterator[ServerProcess]:
    """Two stream connections per device and no idle timeout a slow machine could reach.

    With `tight`'s 1.5 s idle limit, a loaded CI machine let the first two connections
    idle out before the third opened, so the third was admitted (and idled out too).
    """
    args = ["--limit", "stream_connections_per_device=2", "--limit", "stream_idle_s=120"]
    with ServerProcess(shared_db, *args) as proc:
        yield proc


async def test_a_device_holds_at_most_its_share_of_stream_connections(
    crowded: ServerProcess,
) -> None:
    token = provision(crowded.db_url, "scr-conns")
    url = crowded.url.replace("http://", "ws://") + "/v1/stream"
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        connect(url, additional_headers=auth) as one,
        connect(url, additional_headers=auth) as two,
    ):
        # The handshake completes before the token lookup and the admission: an answered
        # frame proves each of the first two admitted, so the third is the one refused
        # (without this, concurrent lookups let the third in first, now and then).
        for i, ws in enumerate((one, two)):
            await ws.send(json.dumps({"id": i, **envelope([], "scr-conns")}))
            assert "acks" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        async with connect(url, additional_headers=auth) as three:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(three.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
        assert "stream connections" in closed.value.rcvd.reason
        assert one.state.name == two.state.name == "OPEN"


async def test_an_idle_stream_is_closed(tight: ServerProcess) -> None:
    token = provision(tight.db_url, "scr-idle")
    url = tight.url.replace("http://", "ws://") + "/v1/stream"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


async def test_stream_frames_past_the_rate_get_an_error_to_resend(tight: ServerProcess) -> None:
    import json

    token = provision(tight.db_url, "scr-rate-ws")
    url = tight.url.replace("http://", "ws://") + "/v1/stream"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        for i in range(6):
            records = [make_record(device_id="scr-rate-ws", seq=i + 1)]
            await ws.send(json.dumps({"id": i, **envelope(records, "scr-rate-ws")}))
        answers = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(6)]
    errors = [a for a in answers if "error" in a]
    assert errors, "some frames must have been refused"
    assert all("send again" in a["error"] and isinstance(a["id"], int) for a in errors)
    # PROTOCOL.md section 3: the retryable error says how long to wait.
    assert all(a["retry_after_ms"] >= 1 for a in errors)
    assert len([a for a in answers if "acks" in a]) >= 3


def test_a_slow_body_is_cut_off_with_408_and_the_service_keeps_serving(
    tight: ServerProcess,
) -> None:
    token = provision(tight.db_url, "scr-slow")
    host, port = tight.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/impressions/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b'{"device_id": '
        )
        answer = sock.recv(4096)  # the socket's own timeout (10 s) would raise instead
    assert answer.startswith(b"HTTP/1.1 408")
    with client(tight.url) as http:
        assert http.get("/healthz").status_code == 200
