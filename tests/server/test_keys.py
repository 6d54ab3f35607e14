"""Device keys over HTTP against a real server: registration, operators' routes, the key log."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from playproof import keylog
from playproof.protocol import Record
from playproof.signing import KeyPair, key_id_of, sign
from tests.server.reporting import operator_token
from tests.support import SHARED, ServerProcess, client, envelope, provision, record_fields

VECTORS: dict[str, Any] = json.loads((SHARED / "vectors-v2.json").read_text())
_ids = itertools.count(1)


def _device(server: ServerProcess) -> tuple[str, str]:
    """A new device on the server: its id and token."""
    device_id = f"scr-keys-{next(_ids)}"
    return device_id, provision(server.db_url, device_id)


def _ops(server: ServerProcess) -> str:
    return operator_token(server.db_url, f"ops-keys-{next(_ids)}")


def _put(server: ServerProcess, token: str, path: str, body: object) -> Any:
    with client(server.url, token) as http:
        return http.put(path, json=body)


def _register(server: ServerProcess, token: str, key_id: str, public_key: str) -> Any:
    return _put(server, token, f"/v1/devices/keys/{key_id}", {"public_key": public_key})


def _new_key() -> tuple[str, str]:
    pair = KeyPair.generate()
    return pair.key_id, pair.public.hex()


@pytest.mark.parametrize(
    "refused", VECTORS["refused_public_keys"], ids=lambda v: v["why"].split(" (")[0][:30]
)
def test_every_refused_public_key_of_the_vectors_is_answered_400(
    server: ServerProcess, refused: dict[str, str]
) -> None:
    _, token = _device(server)
    public = refused["public_key_hex"]
    key_id = refused.get("key_id") or key_id_of(bytes.fromhex(public))
    answer = _register(server, token, key_id, public)
    assert answer.status_code == 400, answer.text
    assert "expected" in answer.json()["error"]


def test_the_vectors_key_registers_201_then_200_and_the_device_must_sign(
    server: ServerProcess,
) -> None:
    device_id, token = _device(server)
    first = _register(server, token, VECTORS["key_id"], VECTORS["public_key_hex"])
    again = _register(server, token, VECTORS["key_id"], VECTORS["public_key_hex"])
    assert (first.status_code, again.status_code) == (201, 200), first.text
    assert first.json()["key_id"] == VECTORS["key_id"]
    assert first.json()["registered_by"] == "device" and first.json()["active"]
    with client(server.url, _ops(server)) as http:
        shown = http.get(f"/v1/devices/{device_id}").json()
    assert shown["signatures_required"] and shown["self_enrol"]
    assert [k["key_id"] for k in shown["keys"]] == [VECTORS["key_id"]]
    assert shown["keys"][0]["registered_at"].endswith("Z")


def test_a_key_id_that_is_not_the_keys_or_a_body_with_more_fields_is_400(
    server: ServerProcess,
) -> None:
    _, token = _device(server)
    key_id, public = _new_key()
    wrong = _register(server, token, "0" * 16, public)
    extra = _put(server, token, f"/v1/devices/keys/{key_id}", {"public_key": public, "x": 1})
    upper = _register(server, token, key_id, public.upper())
    assert (wrong.status_code, extra.status_code, upper.status_code) == (400, 400, 400)
    assert f"expected key_id {key_id}" in wrong.json()["error"]
    assert "got '0000000000000000'" in wrong.json()["error"]
    assert "64 lowercase hex" in upper.json()["error"]


def test_after_a_lock_the_device_gets_403_and_an_operator_still_adds_keys(
    server: ServerProcess,
) -> None:
    device_id, token = _device(server)
    ops = _ops(server)
    with client(server.url, ops) as http:
        locked = http.post(f"/v1/devices/{device_id}/keys/lock", json={"self_enrol": False})
    assert locked.status_code == 200 and locked.json()["self_enrol"] is False
    key_id, public = _new_key()
    refused = _register(server, token, key_id, public)
    assert refused.status_code == 403 and "self-enrolment is closed" in refused.json()["error"]
    added = _put(server, ops, f"/v1/devices/{device_id}/keys/{key_id}", {"public_key": public})
    assert added.status_code == 201 and added.json()["registered_by"].startswith("ops-keys-")
    # The device may now hear that the key an operator added for it stands.
    assert _register(server, token, key_id, public).status_code == 200
    with client(server.url, ops) as http:
        reopened = http.post(f"/v1/devices/{device_id}/keys/lock", json={"self_enrol": True})
    assert reopened.json()["self_enrol"] is True
    assert _register(server, token, *_new_key()).status_code == 201


def test_a_fifth_active_key_is_409_and_a_revoked_key_does_not_count(
    server: ServerProcess,
) -> None:
    device_id, token = _device(server)
    held = [_new_key() for _ in range(4)]
    assert [_register(server, token, *key).status_code for key in held] == [201] * 4
    fifth = _new_key()
    full = _register(server, token, *fifth)
    assert full.status_code == 409 and "4 active keys" in full.json()["error"]
    with client(server.url, _ops(server)) as http:
        revoked = http.post(f"/v1/devices/{device_id}/keys/{held[0][0]}/revoke")
        listed = http.get(f"/v1/devices/{device_id}/keys").json()
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert [k["active"] for k in listed["keys"]] == [False, True, True, True]
    assert _register(server, token, *fifth).status_code == 201
    # A revoked key is never registered again.
    assert _register(server, token, *held[0]).status_code == 409


def test_operators_require_signatures_before_any_key_and_devices_cannot_manage_keys(
    server: ServerProcess,
) -> None:
    device_id, token = _device(server)
    with client(server.url, _ops(server)) as http:
        required = http.post(f"/v1/devices/{device_id}/keys/require")
        unknown = http.get("/v1/devices/nobody-here/keys")
    assert required.status_code == 200
    assert required.json() == {
        "device_id": device_id,
        "self_enrol": True,
        "signatures_required": True,
        "keys": [],
    }
    assert unknown.status_code == 404
    with client(server.url, token) as http:
        answers = [
            http.get(f"/v1/devices/{device_id}/keys").status_code,
            http.post(f"/v1/devices/{device_id}/keys/lock", json={"self_enrol": False}).status_code,
            http.get("/v1/keys").status_code,
        ]
    assert answers == [403, 403, 403]


def _signed(device_id: str, seq: int, pair: KeyPair) -> Record:
    fields = record_fields(device_id=device_id, seq=seq, v=2)
    return sign(Record(**fields, panel_state="on", panel_source="cec"), pair)


def test_a_key_registered_or_revoked_through_the_service_applies_to_the_next_batch(
    server: ServerProcess,
) -> None:
    """The service forgets the device's cached token lookup on every key change it makes: a
    device sealing version 2 right after its key's 201 is not refused for an unknown key,
    and a record arriving right after a revocation is refused."""
    device_id, token = _device(server)
    pair = KeyPair.generate()
    with client(server.url, token) as http:
        # Authenticated (and cached) without a key, then the key.
        assert _register(server, token, pair.key_id, pair.public.hex()).status_code == 201
        first = http.post(
            "/v1/impressions/batch", json=envelope([_signed(device_id, 1, pair)], device_id)
        )
    assert first.json()["acks"][0]["result"] == "accepted", first.text
    with client(server.url, _ops(server)) as http:
        http.post(f"/v1/devices/{device_id}/keys/{pair.key_id}/revoke")
    with client(server.url, token) as http:
        second = http.post(
            "/v1/impressions/batch", json=envelope([_signed(device_id, 2, pair)], device_id)
        )
    assert second.json()["acks"][0] == {"seq": 2, "result": "rejected", "reason": "bad_signature"}


def test_the_key_log_is_served_whole_and_in_pages_with_a_sound_chain(
    server: ServerProcess,
) -> None:
    _, token = _device(server)
    _register(server, token, *_new_key())
    with client(server.url, _ops(server)) as http:
        whole = http.get("/v1/keys")
        first = http.get("/v1/keys", params={"limit": 1})
        rest = http.get("/v1/keys", params={"after": 1})
        beyond = http.get("/v1/keys", params={"after": 10**9})
        bad = http.get("/v1/keys", params={"after": "-1"})
    doc = keylog.parse_document(whole.content)
    assert doc.next_after is None and len(doc.entries) >= 1
    assert keylog.chain_error(doc.entries, head=doc.head) == ""
    page = keylog.parse_document(first.content)
    assert page.entries == doc.entries[:1] and page.next_after == 1
    tail = keylog.parse_document(rest.content)
    assert keylog.chain_error(tail.entries, after=page.entries[0], head=doc.head) == ""
    assert (beyond.status_code, bad.status_code) == (404, 400)


def test_the_key_log_chain_holds_across_a_server_restart(any_url: str) -> None:
    with ServerProcess(any_url) as server:
        device_id, token = _device(server)
        ops = _ops(server)
        _register(server, token, *_new_key())
    with ServerProcess(any_url) as server:
        _register(server, token, *_new_key())
        with client(server.url, ops) as http:
            http.post(f"/v1/devices/{device_id}/keys/lock", json={"self_enrol": False})
            doc = keylog.parse_document(http.get("/v1/keys").content)
    assert [e.event for e in doc.entries] == ["registered", "registered", "self_enrol_closed"]
    assert keylog.chain_error(doc.entries, head=doc.head) == ""
