"""A campaign that requires panel evidence, through a real service's verifier and its export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from playproof.protocol import Record, seal
from playproof.signing import KeyPair, sign
from tests.server.reporting import operator_token
from tests.server.test_verification import SETTLED, catalog, wait_decided
from tests.support import ServerProcess, envelope, now_ms, provision, record_fields


def _records(device_id: str, keys: KeyPair | None, panels: list[str | None]) -> list[Record]:
    end = now_ms() - 1000
    out = []
    for seq, panel in enumerate(panels, 1):
        fields = record_fields(
            device_id=device_id, seq=seq, end_ts=end - seq * 16_000, store_id="store-1"
        )
        record = Record(**fields)
        if keys is None:
            out.append(seal(record))
        else:
            record.panel_state, record.panel_source = panel, "cec"  # type: ignore[assignment]
            out.append(sign(record, keys))
    return out


def _post(url: str, token: str, device_id: str, records: list[Record]) -> list[Any]:
    answer = httpx.post(
        f"{url}/v1/impressions/batch",
        json=envelope(records, device_id),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    acks: list[Any] = answer.json()["acks"]
    return acks


def test_require_panel_bills_plays_with_panel_evidence_and_fails_the_rest(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    with ServerProcess(db_url, *SETTLED) as server:
        ops = operator_token(db_url, "ops")
        auth = {"Authorization": f"Bearer {ops}"}
        put = httpx.put(
            f"{server.url}/v1/catalog", json=catalog(require_panel=True), headers=auth, timeout=30
        )
        assert put.status_code == 200, put.text

        signer, keys = provision(db_url, "scr-p2", "store-1"), KeyPair.generate()
        registered = httpx.put(
            f"{server.url}/v1/devices/keys/{keys.key_id}",
            json={"public_key": keys.public.hex()},
            headers={"Authorization": f"Bearer {signer}"},
            timeout=30,
        )
        assert registered.status_code == 201, registered.text
        acks = _post(server.url, signer, "scr-p2", _records("scr-p2", keys, ["on", "unknown"]))
        assert [a["status"] for a in acks] == ["valid", "valid"]
        old = provision(db_url, "scr-p1", "store-1")
        assert _post(server.url, old, "scr-p1", _records("scr-p1", None, [None]))[0]["status"] == (
            "valid"
        )

        assert wait_decided(db_url, "scr-p2", 2) == {
            1: ("verified", ""),
            2: ("failed", "panel_unknown"),
        }
        # A version-1 record carries no panel evidence at all.
        assert wait_decided(db_url, "scr-p1", 1) == {1: ("failed", "panel_unknown")}

        report = httpx.get(
            f"{server.url}/v1/reports/verification",
            params={"from": "2026-01-01", "to": "2030-01-01", "group_by": "reason"},
            headers=auth,
            timeout=30,
        )
        assert report.status_code == 200, report.text
        assert "panel_unknown" in report.text

        exported = httpx.get(
            f"{server.url}/v1/exports/evidence",
            params={"from": "2026-01-01", "to": "2030-01-01"},
            headers=auth,
            timeout=30,
        )
        lines = [json.loads(line) for line in exported.text.splitlines()]
        fates = {(x["record"]["device_id"], x["record"]["seq"]): x["verification"] for x in lines}
        assert fates == {
            ("scr-p1", 1): {"result": "failed", "reasons": ["panel_unknown"]},
            ("scr-p2", 1): {"result": "verified", "reasons": []},
            ("scr-p2", 2): {"result": "failed", "reasons": ["panel_unknown"]},
        }
