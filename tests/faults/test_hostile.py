"""Hostile and malformed input over both transports: never a 5xx, a crash or a hang."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from playproof.protocol import encode
from tests.support import ServerProcess, client, make_record, now_ms, provision

DEVICE = "scr-hostile"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = list(json.loads(encode(make_record())))


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record of ours with one field replaced, removed, or a field added."""
    record = json.loads(encode(make_record(device_id=DEVICE, seq=draw(st.integers(1, 10**6)))))
    field = draw(st.sampled_from([*FIELDS, "surplus"]))
    action = draw(st.sampled_from(["replace", "drop"]))
    if action == "drop":
        record.pop(field, None)
    else:
        record[field] = draw(json_values)
    return dict(record)


envelopes = st.fixed_dictionaries(
    {
        "device_id": st.just(DEVICE),
        "sent_at": st.just(now_ms()),
        "impressions": st.lists(mutated_records() | json_values, max_size=8),
    }
) | st.dictionaries(
    st.sampled_from(["device_id", "sent_at", "impressions", "id", "type"]), json_values
)


@pytest.fixture(scope="module")
def target(shared_db: str) -> Iterator[tuple[ServerProcess, str]]:
    """A real server and a token for the hostile device."""
    with ServerProcess(
        shared_db, "--limit", "device_rate=100000", "--limit", "device_burst=100000"
    ) as proc:
        yield proc, provision(shared_db, DEVICE)


@pytest.fixture(scope="module")
def http(target: tuple[ServerProcess, str]) -> Iterator[httpx.Client]:
    server, token = target
    with client(server.url, token) as session:
        yield session


def check_answer(response: httpx.Response, sent: object) -> None:
    assert response.status_code in (200, 400, 403, 413), response.text
    if response.status_code == 200:
        assert isinstance(sent, dict)
        assert len(response.json()["acks"]) == len(sent["impressions"])
    else:
        assert response.json()["error"]


@FAST
@given(body=envelopes)
def test_any_envelope_gets_acks_or_a_clear_4xx(http: httpx.Client, body: object) -> None:
    check_answer(http.post("/v1/impressions/batch", json=body), body)


@FAST
@given(body=st.binary(max_size=2000))
def test_any_bytes_get_a_clear_4xx(http: httpx.Client, body: bytes) -> None:
    response = http.post(
        "/v1/impressions/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (200, 400, 413)


@FAST
@given(body=envelopes, cut=st.integers(min_value=1, max_value=40))
def test_truncated_gzip_gets_400(http: httpx.Client, body: object, cut: int) -> None:
    packed = gzip.compress(json.dumps(body).encode())
    response = http.post(
        "/v1/impressions/batch",
        content=packed[:-cut],
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize("depth", [1000, 200_000])
def test_deep_nesting_gets_400(http: httpx.Client, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"device_id": "%s", "sent_at": 1, "impressions": [' % DEVICE.encode() + nested + b"]}"
    response = http.post(
        "/v1/impressions/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "nested" in response.json()["error"]


def test_unicode_ids_are_invalid_records(http: httpx.Client) -> None:
    record = json.loads(encode(make_record(device_id=DEVICE, seq=1)))
    record["campaign_id"] = "kampanjа-кириллица"
    body = {"device_id": DEVICE, "sent_at": now_ms(), "impressions": [record]}
    ack = http.post("/v1/impressions/batch", json=body).json()["acks"][0]
    assert ack == {"seq": 1, "result": "rejected", "reason": "invalid"}


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(generated=st.lists(envelopes.map(json.dumps), min_size=30, max_size=60))
async def test_every_hostile_frame_is_answered_and_the_stream_stays_open(
    target: tuple[ServerProcess, str], generated: list[str]
) -> None:
    server, token = target
    frames = [*generated, "", "{", "null", json.dumps({"id": 2**80}), "[" * 5000 + "]" * 5000]
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        answered = 0
        for text in frames:
            await ws.send(text)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert "error" in reply or "acks" in reply
            answered += 1
        ok = {
            "id": 1,
            "device_id": DEVICE,
            "sent_at": now_ms(),
            "impressions": [json.loads(encode(make_record(device_id=DEVICE, seq=999_999)))],
        }
        await ws.send(json.dumps(ok))
        assert "acks" in json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert answered == len(frames)
    with client(server.url) as http:
        assert http.get("/healthz").status_code == 200


def test_bytes_that_are_not_utf8_inside_a_record_make_it_invalid(http: httpx.Client) -> None:
    record = encode(make_record(device_id=DEVICE, seq=77)).replace(b'"cmp-1"', b'"cmp-\xff"')
    body = b'{"device_id": "%s", "sent_at": %d, "impressions": [%s]}' % (
        DEVICE.encode(),
        now_ms(),
        record,
    )
    response = http.post(
        "/v1/impressions/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["acks"] == [{"seq": 77, "result": "rejected", "reason": "invalid"}]
    broken = http.post(
        "/v1/impressions/batch",
        content=b'{"device_id": "\xff"}',
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 400
    assert "UTF-8" in broken.json()["error"]
