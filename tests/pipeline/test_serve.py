"""`playproof serve --pipeline` and `playproof load` as real processes, healthy and not.

While JetStream is unreachable the service answers 503 (stream frames get an
error), acknowledges nothing and /healthz says so; when it is back, ingest
resumes without a restart. A loader killed with SIGKILL mid-load loses and
double-counts nothing: its batch goes to the next loader.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from playproof.pipeline.loader import wait_loaded
from playproof.pipeline.settings import parse
from playproof.pipeline.sink import JetStreamSink
from playproof.protocol import Record
from playproof.rules import HOUR_MS
from playproof.signing import KeyPair, sign
from tests.pipeline.conftest import delete_streams, pipeline_url
from tests.pipeline.processes import LoaderProcess, impressions, wait_for_rows
from tests.pipeline.servers import NatsServer, require_nats_server
from tests.server.reporting import operator_token
from tests.stores.pipeline import batch
from tests.support import (
    ServerProcess,
    client,
    envelope,
    free_port,
    make_record,
    now_ms,
    provision,
    record_fields,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


def post(url: str, token: str, records: list[Any], device_id: str = "scr-1") -> httpx.Response:
    """POST one batch of records as `device_id`."""
    with client(url, token) as http:
        return http.post("/v1/impressions/batch", json=envelope(records, device_id))


def results(response: httpx.Response) -> list[str]:
    """The result of every ack of a batch answer."""
    assert response.status_code == 200, response.text
    return [ack["result"] for ack in response.json()["acks"]]


async def stream_frame(url: str, token: str, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one frame on the stream and return its answer."""
    ws_url = url.replace("http://", "ws://") + "/v1/stream"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps(frame))
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        return answer


def test_records_are_acked_after_jetstream_and_loaded_into_postgresql(
    pg_url: str, js_url: str
) -> None:
    token = provision(pg_url, "scr-1")
    end = now_ms() - 2_000
    records = [make_record(seq=s, end_ts=end) for s in range(1, 11)]
    with ServerProcess(pg_url, "--pipeline", js_url) as server:
        loader = LoaderProcess(pg_url, js_url).start()
        try:
            health = httpx.get(server.url + "/healthz").json()
            assert health == {"status": "ok", "store": "postgresql", "pipeline": "jetstream"}
            assert results(post(server.url, token, records)) == ["accepted"] * 10
            assert results(post(server.url, token, records[:3])) == ["duplicate"] * 3
            frame = {"id": 7, **envelope([make_record(seq=s, end_ts=end) for s in (12, 13)])}
            answer = asyncio.run(stream_frame(server.url, token, frame))
            assert (answer["id"], [a["result"] for a in answer["acks"]]) == (7, ["accepted"] * 2)
            stale = make_record(seq=14, end_ts=end - 5 * HOUR_MS)
            assert results(post(server.url, token, [stale])) == ["rejected"]
            assert wait_for_rows(pg_url, 12) == 12
            asyncio.run(wait_loaded(parse(js_url), 30))
        finally:
            assert loader.stop() == 0
    shown = subprocess.run(
        [sys.executable, "-m", "playproof", "devices", "show", "scr-1", "--db", pg_url],
        capture_output=True,
        check=True,
    )
    [journal] = json.loads(shown.stdout)["sequences"]["journals"]
    assert (journal["high_water"], journal["open_gaps"]) == (14, [[11, 11]])


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, to kill."""
    require_nats_server()
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_while_jetstream_is_down_nothing_is_acknowledged_then_ingest_resumes(
    pg_url: str, own_nats: NatsServer
) -> None:
    token = provision(pg_url, "scr-1")
    url = pipeline_url(own_nats.host)
    end = now_ms() - 2_000
    before = [make_record(seq=s, end_ts=end) for s in (1, 2)]
    during = [make_record(seq=s, end_ts=end) for s in (3, 4)]
    with ServerProcess(pg_url, "--pipeline", url) as server:
        assert results(post(server.url, token, before)) == ["accepted"] * 2
        own_nats.kill()

        refused = post(server.url, token, during)
        assert (refused.status_code, refused.headers.get("retry-after")) == (503, "1")
        assert "JetStream" in refused.json()["error"]
        health = httpx.get(server.url + "/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable"}, "the reason is in the log only"
        frame = {"id": 3, **envelope(during)}
        answer = asyncio.run(stream_frame(server.url, token, frame))
        assert answer["id"] == 3
        assert answer["error"].startswith("not committed, send again")

        own_nats.start()
        assert _until(lambda: httpx.get(server.url + "/healthz").status_code == 200)
        assert results(post(server.url, token, during)) == ["accepted"] * 2
        assert results(post(server.url, token, before)) == ["duplicate"] * 2


def test_serve_stops_with_one_clear_line_when_jetstream_cannot_be_reached(pg_url: str) -> None:
    url = f"jetstream://127.0.0.1:{free_port()}?name=ppnone"
    done = subprocess.run(
        [sys.executable, "-m", "playproof", "serve", "--db", pg_url, "--pipeline", url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert b"error: JetStream cannot connect to jetstream://127.0.0.1" in done.stderr
    assert b"Traceback" not in done.stderr


def test_a_window_shorter_than_the_rules_need_is_refused(pg_url: str) -> None:
    short = "jetstream://127.0.0.1:4222?window=1h"
    done = subprocess.run(
        [sys.executable, "-m", "playproof", "serve", "--db", pg_url, "--pipeline", short],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert b"expected a dedupe window of at least 18001000 ms" in done.stderr


async def _backlog(url: str, batches: int, per_batch: int) -> None:
    sink = JetStreamSink(parse(url))
    await sink.open()
    try:
        now = now_ms()
        for b in range(batches):
            first = 1 + b * (per_batch + 1)
            records: list[Any] = [
                make_record(seq=s, end_ts=now - 2_000) for s in range(first, first + per_batch)
            ]
            records.append(make_record(seq=first + per_batch, end_ts=now - 5 * HOUR_MS))
            await sink.commit([batch(records, received_at=now + b)])
    finally:
        await sink.close()


def test_a_loader_killed_mid_load_leaves_its_batch_to_the_next(pg_url: str) -> None:
    from tests.pipeline.conftest import require_nats

    require_nats()
    url = pipeline_url(batch=300, ack_wait="2s", partitions=1)
    try:
        asyncio.run(_backlog(url, batches=40, per_batch=250))
        first = LoaderProcess(pg_url, url).start()
        wait_for_rows(pg_url, 1)
        first.kill()
        loaded_by_first = impressions(pg_url)
        second = LoaderProcess(pg_url, url).start()
        try:
            asyncio.run(wait_loaded(parse(url), 60))
        finally:
            assert second.stop() == 0
    finally:
        asyncio.run(delete_streams(parse(url)))
    assert loaded_by_first > 0
    assert impressions(pg_url) == 10_000
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rejects = conn.execute("SELECT count(*), sum(times) FROM rejects").fetchone()
    assert rejects == (40, 40)


def test_through_jetstream_a_resend_after_revocation_is_a_duplicate_and_never_a_conflict(
    pg_url: str, js_url: str
) -> None:
    """PROTOCOL.md section 7's order holds in pipeline mode too: duplicate before
    bad_signature, and bad_signature before conflict."""
    token = provision(pg_url, "scr-signed-js")
    operator = operator_token(pg_url, "ops-js")
    keys = KeyPair.generate()
    end = now_ms() - 2_000

    def signed(seq: int, duration_ms: int = 15_000) -> Any:
        record = Record(**record_fields(device_id="scr-signed-js", seq=seq, end_ts=end))
        record.duration_ms = duration_ms
        record.panel_state, record.panel_source = "on", "drm"
        return sign(record, keys)

    first = signed(1)
    with ServerProcess(pg_url, "--pipeline", js_url) as server:
        with httpx.Client(base_url=server.url) as http:
            put = http.put(
                f"/v1/devices/keys/{keys.key_id}",
                json={"public_key": keys.public.hex()},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert put.status_code == 201, put.text
            assert results(post(server.url, token, [first], "scr-signed-js")) == ["accepted"]
            revoked = http.post(
                f"/v1/devices/scr-signed-js/keys/{keys.key_id}/revoke",
                headers={"Authorization": f"Bearer {operator}"},
            )
            assert revoked.status_code == 200, revoked.text
        assert results(post(server.url, token, [first], "scr-signed-js")) == ["duplicate"]
        # The same key, another checksum: refused for its key, not a conflict.
        other = post(server.url, token, [signed(1, duration_ms=14_000)], "scr-signed-js").json()[
            "acks"
        ][0]
        assert (other["result"], other["reason"]) == ("rejected", "bad_signature")
