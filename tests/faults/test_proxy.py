"""The fault proxy itself: each mode does to a real HTTP exchange what it says."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.faults.proxy import FaultProxy
from tests.support import ServerProcess, envelope, make_record, provision


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    host, port = server.url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as fault:
        yield fault


def post(url: str, token: str, device_id: str, seq: int, timeout: float = 5) -> httpx.Response:
    body = envelope([make_record(device_id=device_id, seq=seq)], device_id)
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    return httpx.post(f"{url}/v1/impressions/batch", json=body, headers=headers, timeout=timeout)


def stored(server: ServerProcess, device_id: str) -> int:
    import sqlite3

    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM impressions WHERE device_id = ?", (device_id,)
            ).fetchone()[0]
        )


def test_pass_and_trickle_deliver(server: ServerProcess, proxy: FaultProxy) -> None:
    token = provision(server.db_url, "scr-proxy-pass")
    assert post(proxy.url, token, "scr-proxy-pass", 1).status_code == 200
    proxy.set_mode("trickle")
    assert post(proxy.url, token, "scr-proxy-pass", 2, timeout=30).status_code == 200
    assert stored(server, "scr-proxy-pass") == 2


@pytest.mark.parametrize("mode", ["drop", "reset"])
def test_drop_and_reset_fail_the_request(
    server: ServerProcess, proxy: FaultProxy, mode: str
) -> None:
    token = provision(server.db_url, f"scr-proxy-{mode}")
    proxy.set_mode(mode)
    with pytest.raises(httpx.TransportError):
        post(proxy.url, token, f"scr-proxy-{mode}", 1)


def test_stall_times_out(server: ServerProcess, proxy: FaultProxy) -> None:
    token = provision(server.db_url, "scr-proxy-stall")
    proxy.set_mode("stall")
    with pytest.raises(httpx.TimeoutException):
        post(proxy.url, token, "scr-proxy-stall", 1, timeout=1)


def test_cut_before_ack_commits_but_the_client_never_hears(
    server: ServerProcess, proxy: FaultProxy
) -> None:
    token = provision(server.db_url, "scr-proxy-cut")
    proxy.set_mode("cut_before_ack")
    with pytest.raises(httpx.TransportError):
        post(proxy.url, token, "scr-proxy-cut", 1)
    assert stored(server, "scr-proxy-cut") == 1
