"""The HTTP routes of PROTOCOL.md sections 3, 4 and 6 against a real server on SQLite."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from itertools import count

import pytest

from playproof.protocol import encode
from playproof.rules import HOUR_MS, MINUTE_MS
from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, envelope, make_record, now_ms, provision

_ids = count(1)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def device(server: ServerProcess) -> tuple[str, str]:
    """A freshly registered device of its own: (device_id, token)."""
    device_id = f"scr-http-{next(_ids)}"
    return device_id, provision(server.db_url, device_id, "store-1")


def post(server: ServerProcess, token: str | None, body: object, **headers: str) -> object:
    with client(server.url, token) as http:
        return http.post("/v1/impressions/batch", json=body, headers=headers)


def rows(server: ServerProcess, sql: str, *params: object) -> list[tuple[object, ...]]:
    path = server.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def test_a_batch_gets_one_ack_per_record_in_order(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    records = [make_record(device_id=device_id, seq=s) for s in (3, 1, 2)]
    with client(server.url, token) as http:
        response = http.post("/v1/impressions/batch", json=envelope(records, device_id))
    assert response.status_code == 200
    body = response.json()
    assert [a["seq"] for a in body["acks"]] == [3, 1, 2]
    assert all(a["result"] == "accepted" and a["status"] == "valid" for a in body["acks"])
    stored = rows(server, "SELECT seq FROM impressions WHERE device_id = ? ORDER BY seq", device_id)
    assert stored == [(1,), (2,), (3,)]


def test_skew_is_sent_at_minus_received_at(server: ServerProcess, device: tuple[str, str]) -> None:
    device_id, token = device
    sent_at = now_ms() + 5 * MINUTE_MS
    with client(server.url, token) as http:
        body = http.post("/v1/impressions/batch", json=envelope([], device_id, sent_at)).json()
    assert body["skew_ms"] == sent_at - body["received_at"]
    assert body["acks"] == []


def test_resending_a_batch_gives_duplicates_and_stores_once(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    records = [make_record(device_id=device_id, seq=s) for s in (1, 2)]
    first = post(server, token, envelope(records, device_id)).json()  # type: ignore[attr-defined]
    again = post(server, token, envelope(records, device_id)).json()  # type: ignore[attr-defined]
    assert [a["result"] for a in first["acks"]] == ["accepted", "accepted"]
    assert again["acks"] == [{"seq": 1, "result": "duplicate"}, {"seq": 2, "result": "duplicate"}]
    assert rows(server, "SELECT count(*) FROM impressions WHERE device_id = ?", device_id) == [(2,)]


def test_same_sequence_with_another_checksum_is_a_conflict_kept_in_rejects(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    post(server, token, envelope([make_record(device_id=device_id, seq=1)], device_id))
    other = make_record(device_id=device_id, seq=1, content_id="cnt-other")
    body = post(server, token, envelope([other], device_id)).json()  # type: ignore[attr-defined]
    assert body["acks"] == [{"seq": 1, "result": "rejected", "reason": "conflict"}]
    kept = rows(server, "SELECT reason, checksum FROM rejects WHERE device_id = ?", device_id)
    assert kept == [("conflict", other.checksum)]


def test_every_reject_reason_is_answered_and_kept_with_the_raw_record(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    now = now_ms()
    tampered = json.loads(encode(make_record(device_id=device_id, seq=2)))
    tampered["campaign_id"] = "cmp-tampered"
    impressions = [
        json.loads(
            encode(make_record(device_id=device_id, seq=1, start_ts=now - 10, end_ts=now - 20))
        ),
        tampered,
        json.loads(encode(make_record(device_id="scr-someone-else", seq=3))),
        json.loads(encode(make_record(device_id=device_id, seq=4, end_ts=now + 60_000))),
        json.loads(encode(make_record(device_id=device_id, seq=5, end_ts=now - 5 * HOUR_MS))),
        {"v": 1, "seq": 6, "what": "is this"},
    ]
    body = {"device_id": device_id, "sent_at": now, "impressions": impressions}
    acks = post(server, token, body).json()["acks"]  # type: ignore[attr-defined]
    reasons = [a["reason"] for a in acks]
    assert reasons == [
        "invalid",
        "bad_checksum",
        "forbidden",
        "future_timestamp",
        "stale",
        "invalid",
    ]
    assert [a["seq"] for a in acks] == [1, 2, 3, 4, 5, 6]
    kept = rows(
        server, "SELECT reason, raw FROM rejects WHERE submitted_by = ? ORDER BY id", device_id
    )
    assert [r[0] for r in kept] == reasons
    assert json.loads(str(kept[1][1]))["campaign_id"] == "cmp-tampered"
    assert json.loads(str(kept[5][1])) == {"v": 1, "seq": 6, "what": "is this"}


def test_a_batch_skewed_past_30_minutes_is_rejected_whole(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    sent_at = now_ms() + 31 * MINUTE_MS
    records = [make_record(device_id=device_id, seq=s, end_ts=sent_at - 1000) for s in (1, 2)]
    acks = post(server, token, envelope(records, device_id, sent_at)).json()["acks"]  # type: ignore[attr-defined]
    assert [a["reason"] for a in acks] == ["clock_skew", "clock_skew"]


def test_a_store_mismatch_is_accepted_with_a_flag(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    record = make_record(device_id=device_id, store_id="store-elsewhere")
    ack = post(server, token, envelope([record], device_id)).json()["acks"][0]  # type: ignore[attr-defined]
    assert ack["result"] == "accepted"
    assert ack["flags"] == ["store_mismatch"]
    assert ack["quality"] < 100


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "Basic abc"}, 401)],
)
def test_missing_or_unknown_tokens_get_401(
    server: ServerProcess, headers: dict[str, str], status: int
) -> None:
    with client(server.url) as http:
        response = http.post("/v1/impressions/batch", json=envelope([]), headers=headers)
    assert response.status_code == status
    assert "token" in response.json()["error"] or "Bearer" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_revoked_token_gets_403(server: ServerProcess) -> None:
    import asyncio

    from playproof.server import admin

    token = provision(server.db_url, "scr-revoked", "store-1")

    async def revoke() -> None:
        async with admin.opened(server.db_url) as store:
            await admin.revoke_device(store, "scr-revoked")

    asyncio.run(revoke())
    import time

    time.sleep(2.1)  # the service caches token lookups for 2 s
    response = post(server, token, envelope([], "scr-revoked"))
    assert response.status_code == 403  # type: ignore[attr-defined]


def test_an_envelope_for_another_device_gets_403_and_stores_nothing(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    _, token = device
    records = [make_record(device_id="scr-victim", seq=1)]
    response = post(server, token, envelope(records, "scr-victim"))
    assert response.status_code == 403  # type: ignore[attr-defined]
    assert rows(server, "SELECT count(*) FROM impressions WHERE device_id = 'scr-victim'") == [(0,)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "JSON"),
        (b'{"device_id": "x"}', "sent_at"),
        (b'{"device_id": "x", "sent_at": -5, "impressions": []}', "sent_at"),
        (b"[1, 2]", "object"),
    ],
)
def test_a_malformed_envelope_gets_400_saying_what_is_wrong(
    server: ServerProcess, device: tuple[str, str], body: bytes, fragment: str
) -> None:
    _, token = device
    with client(server.url, token) as http:
        response = http.post(
            "/v1/impressions/batch", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_another_content_type_gets_415(server: ServerProcess, device: tuple[str, str]) -> None:
    _, token = device
    with client(server.url, token) as http:
        response = http.post(
            "/v1/impressions/batch", content=b"{}", headers={"Content-Type": "text/csv"}
        )
        encoded = http.post(
            "/v1/impressions/batch",
            content=b"{}",
            headers={"Content-Type": "application/json", "Content-Encoding": "br"},
        )
    assert response.status_code == 415
    assert encoded.status_code == 415


def test_over_1000_records_or_1_mib_gets_413(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    many = [make_record(device_id=device_id, seq=s) for s in range(1, 1002)]
    assert post(server, token, envelope(many, device_id)).status_code == 413  # type: ignore[attr-defined]
    big = b'{"device_id": "x", "sent_at": 1, "impressions": [' + b" " * (1024 * 1024) + b"]}"
    with client(server.url, token) as http:
        response = http.post(
            "/v1/impressions/batch", content=big, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413


def test_a_gzip_body_is_accepted(server: ServerProcess, device: tuple[str, str]) -> None:
    device_id, token = device
    records = [make_record(device_id=device_id, seq=s) for s in range(1, 501)]
    body = gzip.compress(json.dumps(envelope(records, device_id)).encode())
    with client(server.url, token) as http:
        response = http.post(
            "/v1/impressions/batch",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 200
    assert len(response.json()["acks"]) == 500


def test_a_gzip_bomb_gets_413_and_the_service_keeps_serving(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    _, token = device
    bomb = gzip.compress(b" " * (512 * 1024 * 1024), compresslevel=9)  # 512 MiB of spaces, ~500 KiB
    with client(server.url, token) as http:
        response = http.post(
            "/v1/impressions/batch",
            content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 413
        assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"\x1f\x8b\x08\x00garbage", "gzip"), (gzip.compress(b'{"device_id":"x"}')[:-6], "truncated")],
)
def test_broken_gzip_gets_400(
    server: ServerProcess, device: tuple[str, str], body: bytes, fragment: str
) -> None:
    _, token = device
    with client(server.url, token) as http:
        response = http.post(
            "/v1/impressions/batch",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_status_is_stored_as_the_latest_health_with_evictions_accumulated(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    first = {
        "type": "status",
        "device_id": device_id,
        "journal_id": "j-1",
        "sent_at": now_ms(),
        "queue_depth": 7,
        "drift_ppm": 2.5,
        "evicted": 3,
        "evicted_ranges": [[1, 3]],
        "novel": 1,
    }
    second = dict(first, queue_depth=1, evicted=2, evicted_ranges=[[10, 11]])
    with client(server.url, token) as http:
        assert http.post("/v1/devices/status", json=first).status_code == 204
        assert http.post("/v1/devices/status", json=second).status_code == 204
        other = http.post("/v1/devices/status", json=dict(first, device_id="scr-other"))
        bad = http.post("/v1/devices/status", json=dict(first, queue_depth="many"))
    assert other.status_code == 403
    assert bad.status_code == 400
    assert "queue_depth" in bad.json()["error"]
    payload, total = rows(
        server, "SELECT payload, evicted_total FROM device_status WHERE device_id = ?", device_id
    )[0]
    assert json.loads(str(payload))["queue_depth"] == 1
    assert total == 5
    ranges = rows(
        server,
        "SELECT first_seq, last_seq FROM evictions WHERE device_id = ? ORDER BY first_seq",
        device_id,
    )
    assert ranges == [(1, 3), (10, 11)]


def test_a_screenshot_is_verified_stored_once_and_linked(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    sha = hashlib.sha256(PNG).hexdigest()
    with client(server.url, token) as http:
        first = http.put(
            f"/v1/screenshots/{sha}", content=PNG, headers={"Content-Type": "image/png"}
        )
        again = http.put(
            f"/v1/screenshots/{sha}", content=PNG, headers={"Content-Type": "image/png"}
        )
        wrong = http.put(
            f"/v1/screenshots/{'0' * 64}", content=PNG, headers={"Content-Type": "image/png"}
        )
        not_png = http.put(
            f"/v1/screenshots/{hashlib.sha256(b'GIF89a').hexdigest()}",
            content=b"GIF89a",
            headers={"Content-Type": "image/png"},
        )
        gif = http.put(f"/v1/screenshots/{sha}", content=PNG, headers={"Content-Type": "image/gif"})
        bad_path = http.put(
            "/v1/screenshots/XYZ", content=PNG, headers={"Content-Type": "image/png"}
        )
    assert (first.status_code, again.status_code) == (201, 200)
    assert (wrong.status_code, not_png.status_code, gif.status_code, bad_path.status_code) == (
        400,
        400,
        415,
        400,
    )
    blob_dir = server.db_url.removeprefix("sqlite:///").removesuffix(".db") + ".blobs"
    with open(f"{blob_dir}/{sha[:2]}/{sha}", "rb") as fh:
        assert fh.read() == PNG
    record = make_record(device_id=device_id, screenshot_sha256=sha, screenshot_at_ms=7000)
    post(server, token, envelope([record], device_id))
    linked = rows(
        server,
        "SELECT s.size FROM impressions i JOIN screenshots s ON s.sha256 = i.screenshot_sha256 "
        "WHERE i.device_id = ?",
        device_id,
    )
    assert linked == [(len(PNG),)]


def test_healthz_and_openapi_describe_every_http_route(server: ServerProcess) -> None:
    with client(server.url) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        doc = http.get("/openapi.json").json()
    assert set(doc["paths"]) == {
        "/v1/impressions/batch",
        "/v1/devices/status",
        "/v1/screenshots/{sha256}",
        "/metrics",
        "/healthz",
        "/openapi.json",
        # The operators' routes (tests/server/test_reports.py).
        "/",
        "/v1/operator",
        "/v1/impressions",
        "/v1/impressions/{device_id}/{journal_id}/{seq}/screenshot",
        "/v1/reports/delivery",
        "/v1/reports/verification",
        "/v1/reports/rejects",
        "/v1/rejects",
        "/v1/devices",
        "/v1/devices/{device_id}",
        "/v1/live",
        # The billing statement (tests/server/test_billing.py) and its page.
        "/v1/reports/billing",
        "/statement.html",
        # The buyer exports (tests/server/test_exports.py).
        "/v1/exports/dv360",
        "/v1/exports/playout",
        "/v1/exports/{export_id}",
        "/v1/exports/{export_id}/skipped",
        "/v1/exports/evidence",
        # The catalog and the verifier's queue (tests/server/test_verification.py).
        "/v1/catalog",
        "/v1/contents/{content_id}/reference",
        "/v1/contents/{content_id}/references/{sha256}",
        "/v1/verification",
        # Device keys and the key log (tests/server/test_keys.py).
        "/v1/devices/keys/{key_id}",
        "/v1/devices/{device_id}/keys",
        "/v1/devices/{device_id}/keys/{key_id}",
        "/v1/devices/{device_id}/keys/{key_id}/revoke",
        "/v1/devices/{device_id}/keys/lock",
        "/v1/devices/{device_id}/keys/require",
        "/v1/keys",
    }
    assert "checksum" in doc["components"]["schemas"]["Record"]["required"]


def test_unknown_routes_and_methods_answer_json(server: ServerProcess) -> None:
    with client(server.url) as http:
        missing = http.get("/v2/nothing")
        wrong = http.get("/v1/impressions/batch")
    assert missing.status_code == 404
    assert wrong.status_code == 405
    assert "error" in missing.json()
    assert "error" in wrong.json()


def test_a_405_names_every_method_the_path_takes_in_allow(server: ServerProcess) -> None:
    """RFC 9110: a 405 carries `Allow`; a path read and written names both methods."""
    with client(server.url) as http:
        batch = http.get("/v1/impressions/batch")
        catalog = http.delete("/v1/catalog")
    assert batch.headers["allow"] == "POST"
    assert catalog.status_code == 405
    assert set(catalog.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT"}


def test_the_rejects_page_refuses_a_format_other_than_json(server: ServerProcess) -> None:
    """The document admits only `format=json` there; anything else is a 400, not JSON anyway."""
    token = operator_token(server.db_url, f"ops-http-{next(_ids)}")
    with client(server.url, token) as http:
        csv = http.get("/v1/rejects", params={"format": "csv"})
        empty = http.get("/v1/rejects", params={"format": ""})
        json_page = http.get("/v1/rejects", params={"format": "json"})
    assert (csv.status_code, empty.status_code, json_page.status_code) == (400, 400, 200)
    assert "expected `format` json" in csv.json()["error"]


def test_the_document_admits_only_what_the_service_accepts(server: ServerProcess) -> None:
    """Parameters the service refuses are outside their schemas (issue 12, item 14)."""
    with client(server.url) as http:
        doc = http.get("/openapi.json").json()

    def param(path: str, name: str) -> dict[str, object]:
        found = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
        return dict(found[0])

    since = param("/v1/impressions", "from")["schema"]
    assert isinstance(since, dict) and since["pattern"] == "^(19[7-9][0-9]|[2-9][0-9]{3})-"
    seq = param("/v1/impressions/{device_id}/{journal_id}/{seq}/screenshot", "seq")["schema"]
    assert seq == {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
    for report in ("/v1/reports/delivery", "/v1/reports/verification", "/v1/reports/billing"):
        assert param(report, "from")["required"] and param(report, "to")["required"]
    zones = param("/v1/reports/delivery", "tz")["schema"]
    assert isinstance(zones, dict) and {"UTC", "Europe/Paris"} <= set(zones["enum"])
    # Content-Encoding describes the body: a parameter let `gzip` go with a plain body.
    batch = doc["paths"]["/v1/impressions/batch"]["post"]
    assert "parameters" not in batch
    assert "Content-Encoding: gzip" in batch["requestBody"]["description"]


def test_gaps_are_tracked_and_filled_by_late_records(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    post(
        server,
        token,
        envelope([make_record(device_id=device_id, seq=s) for s in (1, 5)], device_id),
    )
    assert rows(server, "SELECT first_seq, last_seq FROM gaps WHERE device_id = ?", device_id) == [
        (2, 4)
    ]
    post(server, token, envelope([make_record(device_id=device_id, seq=3)], device_id))
    gaps = rows(
        server,
        "SELECT first_seq, last_seq FROM gaps WHERE device_id = ? ORDER BY first_seq",
        device_id,
    )
    assert gaps == [(2, 2), (4, 4)]
    post(
        server,
        token,
        envelope([make_record(device_id=device_id, seq=s) for s in (2, 4)], device_id),
    )
    assert rows(server, "SELECT count(*) FROM gaps WHERE device_id = ?", device_id) == [(0,)]
    assert rows(server, "SELECT high_water FROM journals WHERE device_id = ?", device_id) == [(5,)]


def test_metrics_count_records_by_result_and_reason(
    server: ServerProcess, device: tuple[str, str]
) -> None:
    device_id, token = device
    operator = operator_token(server.db_url, f"ops-{device_id}")

    def sample(text: str, name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )

    with client(server.url, operator) as http:
        before = http.get("/metrics").text
    records = [make_record(device_id=device_id, seq=s) for s in (1, 2)]
    post(server, token, envelope(records, device_id))
    post(server, token, envelope(records, device_id))
    stale = make_record(device_id=device_id, seq=9, end_ts=now_ms() - 5 * HOUR_MS)
    post(server, token, envelope([stale], device_id))
    with client(server.url, operator) as http:
        after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    for name, grew in [
        ('playproof_records_total{reason="",result="accepted"}', 2),
        ('playproof_records_total{reason="",result="duplicate"}', 2),
        ('playproof_records_total{reason="stale",result="rejected"}', 1),
        ('playproof_ack_latency_seconds_count{transport="http"}', 3),
    ]:
        assert sample(after.text, name) - sample(before, name) == grew, name
