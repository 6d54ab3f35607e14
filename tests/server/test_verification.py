"""The catalog routes and the verifier inside a real `playproof serve`, SIGKILLed mid-run."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.server.reporting import operator_token
from tests.support import ServerProcess, envelope, make_record, now_ms, provision

SETTLED = ("--limit", "verify_settle_ms=0")


def catalog(**campaign: Any) -> dict[str, Any]:
    """A catalog booking what tests.support.make_record plays (store-1, cmp-1, ...)."""
    return {
        "suppliers": [{"supplier_id": "sup-1", "name": "Acme", "currency": "EUR"}],
        "stores": [{"store_id": "store-1", "time_zone": "UTC"}],
        "contents": [{"content_id": "cnt-1", "expected_ms": 15000}],
        "campaigns": [
            {
                "campaign_id": "cmp-1",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-01-01", "to": "2099-01-01"},
                "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
                "price": {"model": "per_play", "amount": "0.01", "currency": "EUR"},
                **campaign,
            }
        ],
    }


def verdicts(db_url: str, device_id: str) -> dict[int, tuple[Any, Any]]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "SELECT seq, verification, verification_reasons FROM impressions WHERE device_id = ?",
            (device_id,),
        )
        return {seq: (v, r) for seq, v, r in rows}


def wait_decided(db_url: str, device_id: str, count: int, timeout: float = 60) -> dict[int, Any]:
    """Poll until `count` plays of the device are decided (bounded; no timing asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        found = verdicts(db_url, device_id)
        if sum(1 for v, _ in found.values() if v != "pending") >= count:
            return found
        assert time.monotonic() < deadline, f"not decided in {timeout} s: {found}"
        time.sleep(0.2)


def decided_count(db_url: str, device_id: str) -> int:
    return sum(v != "pending" for v, _ in verdicts(db_url, device_id).values())


def send(url: str, token: str, device_id: str, seqs: range, **fields: Any) -> None:
    end = now_ms() - 1000
    records = [
        make_record(
            device_id=device_id,
            seq=s,
            start_ts=end - 15_000 - s * 16_000,
            end_ts=end - s * 16_000,
            **fields,
        )
        for s in seqs
    ]
    answer = httpx.post(
        f"{url}/v1/impressions/batch",
        json=envelope(records, device_id),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


@pytest.fixture
def served(tmp_path: Path) -> Any:
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    with ServerProcess(db_url, *SETTLED) as server:
        yield server, operator_token(db_url, "ops")


def test_a_catalog_put_then_plays_are_decided_by_the_service(served: Any) -> None:
    server, ops = served
    auth = {"Authorization": f"Bearer {ops}"}
    put = httpx.put(f"{server.url}/v1/catalog", json=catalog(), headers=auth, timeout=30)
    assert put.status_code == 200, put.text
    assert {(c["kind"], c["action"]) for c in put.json()["changes"]} == {
        ("supplier", "added"),
        ("store", "added"),
        ("content", "added"),
        ("campaign", "added"),
    }
    again = httpx.put(f"{server.url}/v1/catalog", json=catalog(), headers=auth, timeout=30)
    assert again.json()["changes"] == [], "the same document twice changes nothing"
    shown = httpx.get(f"{server.url}/v1/catalog", headers=auth, timeout=30).json()
    assert [c["campaign_id"] for c in shown["campaigns"]] == ["cmp-1"]
    token = provision(server.db_url, "scr-v1", "store-1")
    send(server.url, token, "scr-v1", range(1, 3))
    send(server.url, token, "scr-v1", range(3, 4), campaign_id="cmp-unbooked")
    decided = wait_decided(server.db_url, "scr-v1", 3)
    queue = httpx.get(f"{server.url}/v1/verification", headers=auth, timeout=30).json()
    assert queue["pending"] == 0 and queue["lag_s"] is None
    assert queue["decided_per_s"] > 0, "the service's verifier decided them in the last minute"
    assert decided == {
        1: ("verified", ""),
        2: ("verified", ""),
        3: ("failed", "unknown_campaign"),
    }


def test_a_catalog_error_is_a_400_naming_the_entry_and_field(served: Any) -> None:
    server, ops = served
    bad = catalog(price={"model": "per_play", "amount": "-1", "currency": "EUR"})
    answer = httpx.put(
        f"{server.url}/v1/catalog",
        json=bad,
        headers={"Authorization": f"Bearer {ops}"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "campaigns[cmp-1].price.amount" in answer.json()["error"]


def test_a_device_token_cannot_touch_the_catalog(served: Any) -> None:
    server, _ = served
    token = provision(server.db_url, "scr-v2", "store-1")
    answer = httpx.put(
        f"{server.url}/v1/catalog",
        json=catalog(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 403


def patterned(seed: int) -> bytes:
    image = Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x = (i * 53 + seed * 97) % 600
        draw.rectangle((x, i * 30, x + 40 + seed * 7, i * 30 + 25), fill=(seed * 40 % 255, 20, 90))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_a_screenshot_unlike_the_reference_fails_and_one_like_it_is_verified(
    served: Any,
) -> None:
    import hashlib

    server, ops = served
    auth = {"Authorization": f"Bearer {ops}"}
    httpx.put(
        f"{server.url}/v1/catalog", json=catalog(require_screenshot=True), headers=auth, timeout=30
    ).raise_for_status()
    reference = patterned(1)
    ref = httpx.put(
        f"{server.url}/v1/contents/cnt-1/reference",
        content=reference,
        headers={**auth, "Content-Type": "image/png"},
        timeout=30,
    )
    assert ref.status_code == 201, ref.text
    token = provision(server.db_url, "scr-v3", "store-1")
    device = {"Authorization": f"Bearer {token}"}
    shots = [patterned(1), patterned(5)]
    for seq, shot in enumerate(shots, 1):
        sha = hashlib.sha256(shot).hexdigest()
        httpx.put(
            f"{server.url}/v1/screenshots/{sha}",
            content=shot,
            headers={**device, "Content-Type": "image/png"},
            timeout=30,
        ).raise_for_status()
        send(
            server.url,
            token,
            "scr-v3",
            range(seq, seq + 1),
            screenshot_sha256=sha,
            screenshot_at_ms=7_500,
        )
    decided = wait_decided(server.db_url, "scr-v3", 2)
    assert decided == {1: ("verified", ""), 2: ("failed", "screenshot_mismatch")}


class VerifyProcess:
    """`playproof verify` in a process of its own, deciding 50 plays a turn."""

    def __init__(self, db_url: str) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "playproof", "verify", "--db", db_url),
                *("--limit", "verify_settle_ms=0", "--limit", "verify_batch=50"),
            ],
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_the_verifier_killed_mid_run_and_restarted_decides_every_play_once(
    tmp_path: Path,
) -> None:
    """SIGKILL `serve` (and `verify`) mid-run; after a restart every play is decided once."""
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    with ServerProcess(db_url, *SETTLED, "--no-verify") as server:
        ops = operator_token(db_url, "ops")
        httpx.put(
            f"{server.url}/v1/catalog",
            json=catalog(),
            headers={"Authorization": f"Bearer {ops}"},
            timeout=30,
        ).raise_for_status()
        token = provision(db_url, "scr-k", "store-1")
        for first in range(1, 601, 200):
            send(server.url, token, "scr-k", range(first, first + 200))
    progress: list[int] = []
    # Killed twice inside `serve` (the verifier in the service), once as `playproof verify`.
    for apart in (False, False, True):
        if apart:
            verifier: Any = VerifyProcess(db_url)
        else:
            verifier = ServerProcess(db_url, *SETTLED, "--limit", "verify_batch=50")
            verifier.start()
        before = progress[-1] if progress else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and decided_count(db_url, "scr-k") <= before:
            time.sleep(0.01)
        verifier.kill()
        progress.append(decided_count(db_url, "scr-k"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "playproof",
            "verify",
            "--once",
            "--db",
            db_url,
            "--limit",
            "verify_settle_ms=0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "decided" in done.stderr
    final = verdicts(db_url, "scr-k")
    print("decided after each SIGKILL:", progress)
    assert len(final) == 600
    assert {v for v, _ in final.values()} == {"verified"}
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        logged = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT seq) FROM verification_log WHERE device_id = 'scr-k'"
        ).fetchone()
        rolled = conn.execute(
            "SELECT SUM(plays) FROM rollup_verification WHERE device_id = 'scr-k' AND reason = ''"
        ).fetchone()
    assert logged == (600, 600), "each play decided exactly once"
    assert rolled == (600,), "the rollup counts each decision once"
    json.dumps(final)
