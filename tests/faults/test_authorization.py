"""The authorization matrix: every credential against every route, on a real server.

No token, an unknown token, a revoked one, a device writing for another device, a
device calling operator routes, an operator calling device routes: each is refused
with the status PROTOCOL.md and docs/operators.md give, and nothing is stored for
it (no impression, no status, no screenshot). The only trace a refused write leaves
is the audit row of a record rejected `forbidden`, which is the protocol's point.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.reliability import Tally
from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, envelope, make_record, png, provision

VICTIM = "scr-victim"
ATTACKER = "scr-attacker"

# Who calls, by the credential they hold.
NONE, UNKNOWN_DEVICE, UNKNOWN_OPERATOR = "none", "unknown device token", "unknown operator token"
REVOKED_DEVICE, REVOKED_OPERATOR = "revoked device token", "revoked operator token"
OTHER_DEVICE, OPERATOR = "another device's token", "operator token"

DEVICE_ROUTES = ("POST /v1/impressions/batch", "POST /v1/devices/status")
# A device route refuses what is not a device token (401, as PROTOCOL.md says for an
# unknown token), a revoked device (403), and a device writing as another (403).
DEVICE_EXPECTED = {
    NONE: 401,
    UNKNOWN_DEVICE: 401,
    UNKNOWN_OPERATOR: 401,
    REVOKED_DEVICE: 403,
    REVOKED_OPERATOR: 401,
    OTHER_DEVICE: 403,
    OPERATOR: 401,
}
STREAM_EXPECTED = {  # close codes: 4401 missing or unknown, 4403 revoked
    NONE: 4401,
    UNKNOWN_DEVICE: 4401,
    UNKNOWN_OPERATOR: 4401,
    REVOKED_DEVICE: 4403,
    REVOKED_OPERATOR: 4401,
    OPERATOR: 4401,
}
OPERATOR_ROUTES = (
    "/v1/operator",
    "/v1/impressions",
    f"/v1/impressions/{VICTIM}/j-victim/1/screenshot",
    "/v1/reports/delivery?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
    "/v1/reports/verification?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
    "/v1/reports/rejects",
    "/v1/rejects",
    "/v1/devices",
    f"/v1/devices/{VICTIM}",
    "/v1/live",
    "/metrics",
    "/v1/catalog",
    "/v1/contents/cnt-1/reference",
    "/v1/verification",
    "/v1/reports/billing?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
)
# An operator route refuses a missing or unknown token (401), a device's or a
# revoked operator's (403).
OPERATOR_EXPECTED = {
    NONE: 401,
    UNKNOWN_DEVICE: 401,
    UNKNOWN_OPERATOR: 401,
    REVOKED_DEVICE: 403,
    REVOKED_OPERATOR: 403,
    OTHER_DEVICE: 403,
}


@dataclass
class Fleet:
    server: ServerProcess
    tokens: dict[str, str | None]


def playproof(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "playproof", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def fleet(shared_db: str) -> Iterator[Fleet]:
    """A server, a victim device, and a token of every kind."""
    provision(shared_db, VICTIM)
    tokens: dict[str, str | None] = {
        NONE: None,
        UNKNOWN_DEVICE: "ppd_" + "0" * 48,
        UNKNOWN_OPERATOR: "ppo_" + "0" * 32,
        REVOKED_DEVICE: provision(shared_db, "scr-revoked"),
        REVOKED_OPERATOR: operator_token(shared_db, "ops-revoked"),
        OTHER_DEVICE: provision(shared_db, ATTACKER),
        OPERATOR: operator_token(shared_db, "ops-ok"),
    }
    playproof("devices", "revoke", "scr-revoked", "--db", shared_db)
    playproof("operators", "revoke", "ops-revoked", "--db", shared_db)
    # Every case fails from one address: the failed-authentication limit (tested in
    # tests/faults/test_auth_flood.py) would otherwise refuse the matrix's later cases.
    with ServerProcess(shared_db, "--limit", "auth_failures=100000") as server:
        yield Fleet(server, tokens)


def victim_write(http: httpx.Client, route: str) -> httpx.Response:
    """A write on the victim's behalf: its records, or its status."""
    if route == "POST /v1/impressions/batch":
        records = [make_record(device_id=VICTIM, journal_id="j-victim", seq=1)]
        return http.post("/v1/impressions/batch", json=envelope(records, VICTIM))
    status = {"device_id": VICTIM, "sent_at": make_record().end_ts, "queue_depth": 0}
    return http.post("/v1/devices/status", json=status)


def stored_for_victim(db_url: str) -> dict[str, int]:
    """Rows the service holds that name the victim."""
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE device_id = ?", (VICTIM,)
            ).fetchone()[0]
            for table in ("impressions", "device_status", "journals")
        }


@pytest.mark.parametrize("who", list(DEVICE_EXPECTED))
@pytest.mark.parametrize("route", DEVICE_ROUTES)
def test_a_device_route_refuses_every_wrong_credential_and_stores_nothing(
    fleet: Fleet, route: str, who: str, tally: Tally
) -> None:
    with client(fleet.server.url, fleet.tokens[who]) as http:
        answer = victim_write(http, route)
    tally.faults, tally.records = 1, 1
    assert answer.status_code == DEVICE_EXPECTED[who], (who, route, answer.text)
    assert answer.json()["error"], "a refusal says why"
    if answer.status_code == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
    held = stored_for_victim(fleet.server.db_url)
    tally.doubled = held["impressions"]
    assert held == {"impressions": 0, "device_status": 0, "journals": 0}


@pytest.mark.parametrize("who", [w for w in DEVICE_EXPECTED if w != OTHER_DEVICE])
def test_a_screenshot_upload_without_a_device_token_is_refused_and_not_kept(
    fleet: Fleet, who: str, tally: Tally
) -> None:
    image = png(rgb=(len(who), 1, 2))
    digest = hashlib.sha256(image).hexdigest()
    headers = {"Content-Type": "image/png"}
    with client(fleet.server.url, fleet.tokens[who]) as http:
        answer = http.put(f"/v1/screenshots/{digest}", content=image, headers=headers)
    tally.faults = 1
    assert answer.status_code == DEVICE_EXPECTED[who], (who, answer.text)
    blobs = Path(fleet.server.db_url.removeprefix("sqlite:///")).with_suffix(".blobs")
    assert not any(digest in path.name for path in blobs.rglob("*")), "nothing kept"


async def exchange(url: str, headers: dict[str, str], frame: str) -> str | bytes:
    """Open the stream, send one frame, wait for its answer."""
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(frame)
        return await asyncio.wait_for(ws.recv(), 10)


@pytest.mark.parametrize("who", list(STREAM_EXPECTED))
async def test_the_stream_closes_on_every_wrong_credential_before_taking_a_frame(
    fleet: Fleet, who: str, tally: Tally
) -> None:
    token = fleet.tokens[who]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = fleet.server.url.replace("http://", "ws://") + "/v1/stream"
    record = make_record(device_id=VICTIM, journal_id="j-victim", seq=2)
    frame = json.dumps({"id": 1, **envelope([record], VICTIM)})
    tally.faults, tally.records = 1, 1
    with pytest.raises((ConnectionClosed, InvalidStatus)) as refused:
        await exchange(url, headers, frame)
    if isinstance(refused.value, ConnectionClosed):
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == STREAM_EXPECTED[who], who
    else:  # refused at the handshake: the status mirrors the close code
        assert refused.value.response.status_code == STREAM_EXPECTED[who] - 4000, who
    assert stored_for_victim(fleet.server.db_url)["impressions"] == 0


async def test_a_device_streaming_as_another_gets_an_error_and_nothing_is_stored(
    fleet: Fleet, tally: Tally
) -> None:
    headers = {"Authorization": f"Bearer {fleet.tokens[OTHER_DEVICE]}"}
    url = fleet.server.url.replace("http://", "ws://") + "/v1/stream"
    record = make_record(device_id=VICTIM, journal_id="j-victim", seq=3)
    tally.faults, tally.records = 1, 1
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"id": 7, **envelope([record], VICTIM)}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert answer["id"] == 7 and "error" in answer and "acks" not in answer, answer
    assert stored_for_victim(fleet.server.db_url)["impressions"] == 0


def test_a_device_slipping_another_devices_record_into_its_own_batch_is_rejected_and_audited(
    fleet: Fleet, tally: Tally
) -> None:
    own = make_record(device_id=ATTACKER, journal_id="j-attacker", seq=1)
    smuggled = make_record(device_id=VICTIM, journal_id="j-victim", seq=4)
    with client(fleet.server.url, fleet.tokens[OTHER_DEVICE]) as http:
        answer = http.post("/v1/impressions/batch", json=envelope([own, smuggled], ATTACKER)).json()
    tally.faults, tally.records = 1, 2
    results = [(a["result"], a.get("reason")) for a in answer["acks"]]
    assert results == [("accepted", None), ("rejected", "forbidden")]
    assert stored_for_victim(fleet.server.db_url)["impressions"] == 0
    with sqlite3.connect(fleet.server.db_url.removeprefix("sqlite:///")) as conn:
        audited = conn.execute(
            "SELECT count(*) FROM rejects WHERE reason = 'forbidden' AND device_id = ?",
            (VICTIM,),
        ).fetchone()[0]
    assert audited == 1, "the refused record is kept, with its reason, for audit"


@pytest.mark.parametrize("who", list(OPERATOR_EXPECTED))
@pytest.mark.parametrize("route", OPERATOR_ROUTES)
def test_an_operator_route_refuses_every_credential_but_a_live_operator_token(
    fleet: Fleet, route: str, who: str, tally: Tally
) -> None:
    with client(fleet.server.url, fleet.tokens[who]) as http:
        answer = http.get(route)
    with client(fleet.server.url, fleet.tokens[OPERATOR]) as http:
        allowed = http.get(route)
    tally.faults = 1
    assert answer.status_code == OPERATOR_EXPECTED[who], (who, route, answer.text)
    assert VICTIM not in answer.text, "a refusal leaks nothing"
    assert allowed.status_code in (200, 404), (route, allowed.text)
