"""The evidence export and the buyer's offline check, from a real server to `verify-evidence`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from playproof import evidence
from playproof.cli import app
from playproof.keylog import parse_document
from playproof.protocol import Record, checksum_ok, compute_checksum, decode_record, seal
from playproof.server.params import parse_time
from playproof.signing import KeyPair, sign
from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, envelope, now_ms, provision, record_fields

HOUR = 3_600_000


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Exported:
    """A server holding signed plays of two keys (one revoked since), and unsigned ones."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.operator = operator_token(server.db_url, "ops")
        self.start = now_ms() - HOUR
        self.keys = KeyPair.generate()
        self.old = KeyPair.generate()
        signer = provision(server.db_url, "scr-ev1", "store-1")
        for keys in (self.old, self.keys):
            with client(server.url, signer) as http:
                put = http.put(
                    f"/v1/devices/keys/{keys.key_id}", json={"public_key": keys.public.hex()}
                )
            assert put.status_code == 201, put.text
        self.post(signer, "scr-ev1", [self.signed(self.old, seq) for seq in (1, 2)])
        self.operator_post(f"/v1/devices/scr-ev1/keys/{self.old.key_id}/revoke")
        self.post(signer, "scr-ev1", [self.signed(self.keys, seq) for seq in (3, 4, 5)])
        plain = provision(server.db_url, "scr-ev2", "store-1")
        unsigned = [seal(Record(**record_fields(device_id="scr-ev2", seq=s))) for s in (1, 2)]
        self.post(plain, "scr-ev2", unsigned)
        self.end = now_ms() + HOUR

    def signed(self, keys: KeyPair, seq: int) -> Record:
        record = Record(**record_fields(device_id="scr-ev1", seq=seq))
        record.panel_state, record.panel_source = "on", "drm"
        return sign(record, keys)

    def post(self, token: str, device_id: str, records: list[Record]) -> None:
        with client(self.server.url, token) as http:
            response = http.post("/v1/impressions/batch", json=envelope(records, device_id))
        assert response.status_code == 200, response.text
        assert {a["result"] for a in response.json()["acks"]} == {"accepted"}

    def operator_post(self, path: str) -> None:
        with client(self.server.url, self.operator) as http:
            response = http.post(path, json={})
        assert response.status_code == 200, response.text

    def get(self, path: str, **params: Any) -> bytes:
        with client(self.server.url, self.operator) as http:
            response = http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.content

    def export(self) -> bytes:
        return self.get("/v1/exports/evidence", **{"from": _iso(self.start), "to": _iso(self.end)})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    db: Path = tmp_path_factory.mktemp("evidence") / "p.db"
    with ServerProcess(f"sqlite:///{db}", "--no-verify") as server:
        yield Exported(server)


def verify(tmp_path: Path, export: bytes, keylog: bytes) -> tuple[int, str]:
    (tmp_path / "evidence.ndjson").write_bytes(export)
    (tmp_path / "keys.json").write_bytes(keylog)
    result = CliRunner().invoke(
        app,
        [
            "verify-evidence",
            str(tmp_path / "evidence.ndjson"),
            "--keys",
            str(tmp_path / "keys.json"),
        ],
    )
    return result.exit_code, result.output


def test_the_export_holds_each_record_exactly_as_its_device_sealed_it(exported: Exported) -> None:
    lines = [json.loads(line) for line in exported.export().splitlines()]
    assert len(lines) == 7
    signed = [x for x in lines if x["record"]["device_id"] == "scr-ev1"]
    unsigned = [x for x in lines if x["record"]["device_id"] == "scr-ev2"]
    assert {x["record"]["v"] for x in signed} == {2} and {x["record"]["v"] for x in unsigned} == {1}
    assert all(len(x["record"]["sig"]) == 128 for x in signed)
    assert all("sig" not in x["record"] and "key_id" not in x["record"] for x in unsigned)
    for x in lines:
        # Every field the wire carries, in its wire form: it decodes strictly, checksum and all.
        record = decode_record(json.dumps(x["record"]).encode())
        assert checksum_ok(record) and _fields(record) == x["record"]
    assert all(x["status"] == "valid" for x in lines)
    assert all(x["verification"] == {"result": "pending", "reasons": []} for x in lines)
    assert all(isinstance(x["received_at"], int) for x in lines)


def test_the_cli_export_writes_the_same_lines_as_the_route(
    exported: Exported, tmp_path: Path
) -> None:
    out = tmp_path / "evidence.ndjson"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "evidence",
            "--from",
            _iso(exported.start),
            "--to",
            _iso(exported.end),
            "--out",
            str(out),
            "--db",
            exported.server.db_url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == exported.export()


def test_a_real_export_verifies_with_the_key_log_revoked_key_included(
    exported: Exported, tmp_path: Path
) -> None:
    code, output = verify(tmp_path, exported.export(), exported.get("/v1/keys"))
    assert code == 0, output
    assert "key log chain: intact" in output
    # When and by whom each key came and went, from the log.
    assert exported.old.key_id in output and "revoked" in output and "ops" in output
    report = evidence.verify(
        exported.export().splitlines(), parse_document(exported.get("/v1/keys"))
    )
    # scr-ev1: 5 good (2 under the key revoked after they were received); scr-ev2: 2 unsigned.
    assert report.ok and not report.chain
    assert dict(report.counts["scr-ev1"]) == {"good": 5}
    assert dict(report.counts["scr-ev2"]) == {"unsigned": 2}


def test_one_field_changed_in_one_export_line_is_caught(exported: Exported, tmp_path: Path) -> None:
    lines = exported.export().splitlines()
    index = next(i for i, line in enumerate(lines) if b'"scr-ev1"' in line)
    line = json.loads(lines[index])
    record = decode_record(json.dumps(line["record"]).encode())
    record.duration_ms += 1
    record.checksum = compute_checksum(record)  # the checksum fixed, the signature cannot be
    line["record"] = json.loads(json.dumps({**line["record"], **_fields(record)}))
    lines[index] = json.dumps(line).encode()
    code, output = verify(tmp_path, b"\n".join(lines) + b"\n", exported.get("/v1/keys"))
    assert code == 1
    assert "does not verify" in output and "FAILED" in output


def test_one_entry_changed_in_the_key_log_is_caught(exported: Exported, tmp_path: Path) -> None:
    log = json.loads(exported.get("/v1/keys"))
    log["entries"][0]["at"] -= 1
    code, output = verify(tmp_path, exported.export(), json.dumps(log).encode())
    assert code == 1
    assert "chain broken" in output and "entry 1" in output


def test_the_export_wants_a_period(exported: Exported) -> None:
    with client(exported.server.url, exported.operator) as http:
        response = http.get("/v1/exports/evidence", params={"from": _iso(exported.start)})
    assert response.status_code == 400
    assert parse_time("to", _iso(exported.end)) == exported.end


def _fields(record: Record) -> dict[str, Any]:
    import msgspec

    found: dict[str, Any] = json.loads(msgspec.json.encode(record))
    return found


def test_a_period_without_plays_is_an_empty_export(exported: Exported) -> None:
    assert exported.get("/v1/exports/evidence", **{"from": "2020-01-01", "to": "2020-01-02"}) == b""
