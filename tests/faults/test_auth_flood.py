"""Failed authentications are limited per client address, before the store is asked.

A flood of random tokens from one loopback address (127.0.0.1) must cost the
store a bounded number of token lookups and be answered 429 past its budget,
while a device on another address (127.0.0.2) keeps committing; a shop of
screens behind one address that authenticate correctly is never limited; and
`X-Forwarded-For` names the client only when the peer is a trusted proxy.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from playproof.config import Limits
from tests.device.helpers import impressions
from tests.server.reporting import operator_token
from tests.support import ServerProcess, envelope, make_record, provision

FLOOD = 2000
CONCURRENCY = 32
BUDGET = Limits().auth_failures


def bad_token() -> str:
    """A token nobody holds: a cache miss every time."""
    return "ppd_" + secrets.token_urlsafe(24)


def from_address(url: str, address: str, token: str | None = None) -> httpx.AsyncClient:
    """A client whose connections leave from `address` (any 127.x is this machine)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=url, headers=headers, transport=transport, timeout=30)


def lookups(server: ServerProcess, token: str) -> float:
    """The service's count of token lookups that reached the store (read from 127.0.0.4)."""
    transport = httpx.HTTPTransport(local_address="127.0.0.4")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, transport=transport) as http:
        text = http.get("/metrics").text
    found = re.search(r"^playproof_token_lookups_total (\S+)$", text, re.M)
    assert found, "the metric is exported"
    return float(found.group(1))


async def flood(url: str, address: str, count: int, seen: Counter[int], **headers: str) -> None:
    """`count` requests with random tokens from `address`, CONCURRENCY at a time."""
    left = iter(range(count))
    async with from_address(url, address) as http:

        async def worker() -> None:
            for _ in left:
                response = await http.post(
                    "/v1/impressions/batch",
                    json=envelope([], "scr-nobody"),
                    headers={"Authorization": f"Bearer {bad_token()}", **headers},
                )
                seen[response.status_code] += 1
                if response.status_code == 429:
                    assert int(response.headers["retry-after"]) >= 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.fixture(scope="module")
def served(shared_db: str) -> Iterator[tuple[ServerProcess, str]]:
    """A server with the default limits, and an operator token to read its metrics."""
    ops = operator_token(shared_db, "ops-flood")
    with ServerProcess(shared_db) as proc:
        yield proc, ops


async def test_a_bad_token_flood_from_one_address_is_refused_before_the_store_and_another_commits(
    served: tuple[ServerProcess, str],
) -> None:
    server, ops = served
    token = provision(server.db_url, "scr-next-door")
    before = lookups(server, ops)
    seen: Counter[int] = Counter()
    attacker = asyncio.create_task(flood(server.url, "127.0.0.1", FLOOD, seen))
    answers = []
    async with from_address(server.url, "127.0.0.2", token) as http:
        for seq in range(1, 21):
            body = envelope([make_record(device_id="scr-next-door", seq=seq)], "scr-next-door")
            answers.append(await http.post("/v1/impressions/batch", json=body))
    await attacker
    spent = lookups(server, ops) - before
    assert [r.status_code for r in answers] == [200] * 20
    assert [r.json()["acks"][0]["result"] for r in answers] == ["accepted"] * 20
    assert len(impressions(server.db_url, "scr-next-door")) == 20
    assert set(seen) == {401, 429} and sum(seen.values()) == FLOOD
    assert seen[401] <= BUDGET + CONCURRENCY + 10, seen
    # The budget, the requests already past the check when it ran out, the good device's
    # lookups (one per cache time) and the two reads of /metrics: not one per bad token.
    assert spent <= BUDGET + CONCURRENCY + 40, (spent, seen)


async def test_a_stream_from_an_address_past_its_failures_is_closed_1013_before_the_store(
    served: tuple[ServerProcess, str],
) -> None:
    server, _ = served
    seen: Counter[int] = Counter()
    await flood(server.url, "127.0.0.5", BUDGET + 5, seen)
    assert seen[429] > 0
    assert await stream_close(server, "127.0.0.5") == 1013
    assert await stream_close(server, "127.0.0.6") == 4401, "another address: unknown token"


async def stream_close(server: ServerProcess, address: str) -> int:
    """The close code of a stream opened from `address` with a bad token."""
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    headers = {"Authorization": f"Bearer {bad_token()}"}
    async with connect(url, additional_headers=headers, local_addr=(address, 0)) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_a_shop_behind_one_address_that_authenticates_is_never_limited(
    served: tuple[ServerProcess, str],
) -> None:
    """Twenty screens behind one NAT address, 200 requests and a few failures among them."""
    server, _ = served
    devices = {f"scr-shop-{i}": provision(server.db_url, f"scr-shop-{i}") for i in range(20)}
    statuses: Counter[int] = Counter()
    async with from_address(server.url, "127.0.0.3") as http:
        for seq in range(1, 11):
            for device, token in devices.items():
                body = envelope([make_record(device_id=device, seq=seq)], device)
                headers = {"Authorization": f"Bearer {token}"}
                response = await http.post("/v1/impressions/batch", json=body, headers=headers)
                statuses[response.status_code] += 1
            wrong = await http.get("/v1/devices", headers={"Authorization": "Bearer nope"})
            statuses[wrong.status_code] += 1
    assert statuses == {200: 200, 401: 10}


async def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy(db_url: str) -> None:
    """127.0.0.1 is the trusted proxy: its X-Forwarded-For names the client; the same
    header from 127.0.0.2, a peer nobody trusts, changes nothing."""
    with ServerProcess(db_url, "--limit", "trusted_proxies=127.0.0.1") as server:
        behind: Counter[int] = Counter()
        await flood(server.url, "127.0.0.1", BUDGET + 10, behind, **forwarded_for("198.51.100.7"))
        neighbour: Counter[int] = Counter()
        await flood(server.url, "127.0.0.1", 5, neighbour, **forwarded_for("198.51.100.8"))
        chained: Counter[int] = Counter()
        await flood(
            server.url, "127.0.0.1", 3, chained, **forwarded_for("203.0.113.9, 198.51.100.7")
        )
        spoofed: Counter[int] = Counter()
        for i in range(BUDGET + 10):  # a new address in the header every time
            await flood(server.url, "127.0.0.2", 1, spoofed, **forwarded_for(f"203.0.113.{i}"))
    assert behind[429] > 0, "the client behind the proxy is limited"
    assert neighbour == {401: 5}, "another client behind the same proxy is not"
    assert chained == {429: 3}, "the nearest address the proxy did not add is the client"
    assert spoofed[429] > 0, "an untrusted peer is limited by its own address"


def forwarded_for(client: str) -> dict[str, str]:
    """An X-Forwarded-For header naming `client`."""
    return {"X-Forwarded-For": client}
