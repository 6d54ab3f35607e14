"""Protocol version 2 at ingest, through a real server process: PROTOCOL.md section 7's checks.

The published vectors (`vectors-v2.json`) were signed for plays in November 2026,
so the server runs on a simulated clock that starts just after them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from playproof.protocol import Record, decode_record
from playproof.signing import KeyPair, sign
from playproof.stores import open_store
from tests.server.reporting import operator_token
from tests.support import SHARED, ServerProcess, client, envelope, now_ms, provision, record_fields

VECTORS: dict[str, Any] = json.loads((SHARED / "vectors-v2.json").read_text())
# The simulated clock starts 5 s after the vectors' first play ended.
EPOCH_MS = 1_795_481_420_000


class Signed:
    """A server on a clock just after the vectors, its operator, and its simulated time."""

    def __init__(self, server: ServerProcess, anchor: int) -> None:
        self.server = server
        self.anchor = anchor
        self.operator = operator_token(server.db_url, "ops")

    def now(self) -> int:
        """The server's simulated clock, as the test reads it."""
        return EPOCH_MS + (now_ms() - self.anchor)

    def device(self, device_id: str, store_id: str = "store-12") -> str:
        """A new device's token."""
        return provision(self.server.db_url, device_id, store_id)

    def post(self, token: str, device_id: str, records: list[Record]) -> list[dict[str, Any]]:
        """One batch sent now on the server's clock; its acks."""
        with client(self.server.url, token) as http:
            response = http.post(
                "/v1/impressions/batch", json=envelope(records, device_id, self.now())
            )
        assert response.status_code == 200, response.text
        acks: list[dict[str, Any]] = response.json()["acks"]
        return acks

    def post_raw(self, token: str, device_id: str, raw: list[dict[str, Any]]) -> list[Any]:
        """One batch of records given as JSON objects, exactly as written."""
        body = {"device_id": device_id, "sent_at": self.now(), "impressions": raw}
        with client(self.server.url, token) as http:
            response = http.post("/v1/impressions/batch", json=body)
        assert response.status_code == 200, response.text
        acks: list[Any] = response.json()["acks"]
        return acks

    def register(self, token: str, keys: KeyPair) -> int:
        """PUT the device's own public key; the status."""
        with client(self.server.url, token) as http:
            response = http.put(
                f"/v1/devices/keys/{keys.key_id}", json={"public_key": keys.public.hex()}
            )
        assert response.status_code in (200, 201), response.text
        return response.status_code

    def operator_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """An operator's POST; its JSON."""
        with client(self.server.url, self.operator) as http:
            response = http.post(path, json=body or {})
        assert response.status_code == 200, response.text
        return response.json()

    def rejects(self, device_id: str) -> list[dict[str, Any]]:
        """The device's rejects, newest first."""
        with client(self.server.url, self.operator) as http:
            response = http.get("/v1/rejects", params={"device_id": device_id})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["rejects"]
        return found

    def detail(self, device_id: str) -> Any:
        """GET /v1/devices/{id}."""
        with client(self.server.url, self.operator) as http:
            response = http.get(f"/v1/devices/{device_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def signed(self, keys: KeyPair, device_id: str, seq: int, **fields: Any) -> Record:
        """A version-2 record of a play that ended a second ago on the server's clock."""
        end = fields.pop("end_ts", None) or self.now() - 1000
        values = record_fields(device_id=device_id, seq=seq, store_id="store-12", end_ts=end)
        values.update(fields)
        record = Record(**values)
        record.panel_state, record.panel_source = "on", "cec"
        return sign(record, keys)

    def unsigned(self, device_id: str, seq: int) -> Record:
        """A version-1 record of a play that ended a second ago on the server's clock."""
        from playproof.protocol import seal

        values = record_fields(
            device_id=device_id, seq=seq, store_id="store-12", end_ts=self.now() - 1000
        )
        return seal(Record(**values))


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    db: Path = tmp_path_factory.mktemp("signed") / "p.db"
    anchor = now_ms()
    clock = f"speed=1,anchor={anchor},epoch={EPOCH_MS}"
    with ServerProcess(f"sqlite:///{db}", "--sim-clock", clock, "--no-verify") as server:
        yield Signed(server, anchor)


def vector_record(entry: dict[str, Any]) -> Record:
    return decode_record(json.dumps(entry["record"]).encode())


def vector_keys() -> KeyPair:
    return KeyPair.from_seed(bytes.fromhex(VECTORS["private_key_seed_hex"]))


def test_every_published_vector_is_judged_as_the_protocol_says(signed: Signed) -> None:
    token = signed.device("scr-0042")
    keys = vector_keys()
    assert keys.key_id == VECTORS["key_id"]
    assert signed.register(token, keys) == 201
    # The bad ones first: sent after a good seq 1, the S + L one would be its duplicate
    # (the signature is not in the checksum, so it names the stored record).
    bad = [vector_record(e) for e in VECTORS["bad_signature"]]
    acks = signed.post(token, "scr-0042", bad)
    assert [(a["result"], a.get("reason")) for a in acks] == [("rejected", "bad_signature")] * 3
    details = {r["seq"]: r["detail"] for r in signed.rejects("scr-0042")}
    assert "does not verify" in details[1] or "not canonical" in details[1]
    assert "unknown key" in details[5]
    stored = [r["detail"] for r in signed.rejects("scr-0042")]
    assert any("not canonical: S is not below" in d for d in stored)
    assert any("does not verify under key a9f14be0b3168b16" in d for d in stored)

    invalid = signed.post_raw(token, "scr-0042", [e["record"] for e in VECTORS["invalid"]])
    assert [(a["result"], a.get("reason")) for a in invalid] == [("rejected", "invalid")]

    good = [vector_record(e) for e in VECTORS["vectors"]]
    acks = signed.post(token, "scr-0042", good)
    assert [a["result"] for a in acks] == ["accepted"] * len(good)
    assert [a["status"] for a in acks] == ["valid", "partial", "partial", "partial"]
    assert "panel_unknown" in acks[1]["flags"] and "panel_off" in acks[2]["flags"]
    again = signed.post(token, "scr-0042", good)
    assert [a["result"] for a in again] == ["duplicate"] * len(good)
    # The refused seq 5 holds no place: once seq 6 arrives, 5 is a gap.
    sixth = signed.signed(keys, "scr-0042", 6, journal_id="j-7f3a9c")
    assert signed.post(token, "scr-0042", [sixth])[0]["result"] == "accepted"
    [journal] = signed.detail("scr-0042")["journals"]
    assert journal["open_gaps"] == [[5, 5]]


def test_a_bad_signature_does_not_fill_its_place_in_the_sequence(signed: Signed) -> None:
    token = signed.device("scr-gap")
    keys = KeyPair.generate()
    signed.register(token, keys)
    first = signed.signed(keys, "scr-gap", 1)
    forged = signed.signed(keys, "scr-gap", 2)
    forged.duration_ms += 1  # changed after signing, checksum recomputed: only the sig breaks
    from playproof.protocol import seal

    seal(forged)
    third = signed.signed(keys, "scr-gap", 3)
    acks = signed.post(token, "scr-gap", [first, forged, third])
    assert [(a["result"], a.get("reason")) for a in acks] == [
        ("accepted", None),
        ("rejected", "bad_signature"),
        ("accepted", None),
    ]
    [journal] = signed.detail("scr-gap")["journals"]
    assert journal["open_gaps"] == [[2, 2]]


def test_a_resend_after_revocation_is_a_duplicate_and_a_new_record_is_refused(
    signed: Signed,
) -> None:
    token = signed.device("scr-rev")
    keys = KeyPair.generate()
    signed.register(token, keys)
    first = signed.signed(keys, "scr-rev", 1)
    assert signed.post(token, "scr-rev", [first])[0]["result"] == "accepted"
    signed.operator_post(f"/v1/devices/scr-rev/keys/{keys.key_id}/revoke")
    assert signed.post(token, "scr-rev", [first])[0]["result"] == "duplicate"
    later = signed.signed(keys, "scr-rev", 2)
    ack = signed.post(token, "scr-rev", [later])[0]
    assert (ack["result"], ack["reason"]) == ("rejected", "bad_signature")
    [reject] = signed.rejects("scr-rev")
    assert f"key {keys.key_id} revoked at" in reject["detail"]


def test_a_device_with_a_key_has_its_version_1_records_refused(signed: Signed) -> None:
    token = signed.device("scr-v1k")
    keys = KeyPair.generate()
    signed.register(token, keys)
    ack = signed.post(token, "scr-v1k", [signed.unsigned("scr-v1k", 1)])[0]
    assert (ack["result"], ack["reason"]) == ("rejected", "bad_signature")
    [reject] = signed.rejects("scr-v1k")
    assert (
        f"version 1 refused: device scr-v1k has signed since key {keys.key_id}"
        in (reject["detail"])
    )


def test_an_operator_can_require_signatures_before_the_device_has_a_key(signed: Signed) -> None:
    token = signed.device("scr-req")
    signed.operator_post("/v1/devices/scr-req/keys/require")
    ack = signed.post(token, "scr-req", [signed.unsigned("scr-req", 1)])[0]
    assert (ack["result"], ack["reason"]) == ("rejected", "bad_signature")
    [reject] = signed.rejects("scr-req")
    assert "an operator requires signatures" in reject["detail"]


def test_a_device_without_any_key_keeps_sending_version_1(signed: Signed) -> None:
    token = signed.device("scr-old")
    acks = signed.post(token, "scr-old", [signed.unsigned("scr-old", s) for s in (1, 2)])
    assert [a["result"] for a in acks] == ["accepted", "accepted"]


def test_a_version_2_record_with_a_key_the_device_never_registered_is_refused(
    signed: Signed,
) -> None:
    token = signed.device("scr-nokey")
    record = signed.signed(KeyPair.generate(), "scr-nokey", 1)
    ack = signed.post(token, "scr-nokey", [record])[0]
    assert (ack["result"], ack["reason"]) == ("rejected", "bad_signature")
    [reject] = signed.rejects("scr-nokey")
    assert "unknown key" in reject["detail"]


def test_a_bad_signature_wins_over_the_clock_rules_that_come_after_it(signed: Signed) -> None:
    token = signed.device("scr-order")
    keys = KeyPair.generate()
    signed.register(token, keys)
    # Stale on the device's own clock (ended 5 h before it was sent) and forged.
    stale = signed.signed(keys, "scr-order", 1, end_ts=signed.now() - 5 * 3_600_000)
    stale.sig = "00" * 64
    ack = signed.post(token, "scr-order", [stale])[0]
    assert (ack["result"], ack["reason"]) == ("rejected", "bad_signature")
    honest = signed.signed(keys, "scr-order", 2, end_ts=signed.now() - 5 * 3_600_000)
    ack = signed.post(token, "scr-order", [honest])[0]
    assert (ack["result"], ack["reason"]) == ("rejected", "stale")


def test_signature_checks_are_counted_in_the_metrics(signed: Signed) -> None:
    token = signed.device("scr-metrics")
    keys = KeyPair.generate()
    signed.register(token, keys)
    signed.post(token, "scr-metrics", [signed.signed(keys, "scr-metrics", 1)])
    with client(signed.server.url, signed.operator) as http:
        text = http.get("/metrics").text
    assert 'playproof_signature_checks_total{result="good"}' in text
    assert 'playproof_signature_checks_total{result="refused"}' in text


async def test_one_record_stream_frames_in_flight_are_each_judged_on_their_own_signature(
    signed: Signed,
) -> None:
    token = signed.device("scr-ws")
    keys = KeyPair.generate()
    signed.register(token, keys)
    url = signed.server.url.replace("http://", "ws://") + "/v1/stream"
    frames = []
    for seq in range(1, 41):
        record = signed.signed(keys, "scr-ws", seq)
        if seq % 5 == 0:
            record.sig = "00" * 64  # forged: canonical (S = 0), but no key made it
        body = envelope([record], "scr-ws", signed.now())
        frames.append(json.dumps({"id": seq, **body}))
    auth = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=auth) as ws:
        for text in frames:  # all in flight at once: their checks share pool jobs
            await ws.send(text)
        answers = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in frames]
    results = {a["id"]: (a["acks"][0]["result"], a["acks"][0].get("reason")) for a in answers}
    assert results == {
        seq: ("rejected", "bad_signature") if seq % 5 == 0 else ("accepted", None)
        for seq in range(1, 41)
    }


def test_a_key_registered_elsewhere_is_found_although_the_device_is_cached(
    signed: Signed,
) -> None:
    """A key added by another node or the CLI reaches ingest before the 2 s token cache
    expires: a record naming a key the cached device lacks re-reads the device's keys."""
    token = signed.device("scr-elsewhere")
    assert signed.post(token, "scr-elsewhere", []) == []  # the device is cached now, keyless
    keys = KeyPair.generate()

    async def add_key() -> None:
        store = open_store(signed.server.db_url)
        await store.open()
        try:
            await store.register_key(
                "scr-elsewhere", keys.key_id, keys.public.hex(), signed.now(), "ops", True
            )
        finally:
            await store.close()

    asyncio.run(add_key())
    ack = signed.post(token, "scr-elsewhere", [signed.signed(keys, "scr-elsewhere", 1)])[0]
    assert ack["result"] == "accepted", ack
