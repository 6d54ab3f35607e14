"""SQLite on a full filesystem: 503 and nothing acknowledged while full, recovery after."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.reliability import Tally
from tests.support import ServerProcess, client, envelope, make_record, provision


def test_a_full_disk_answers_503_acknowledges_nothing_and_recovers_without_restart(
    small_disk: Path, tally: Tally
) -> None:
    db_url = f"sqlite:///{small_disk / 'playproof.db'}"
    token = provision(db_url, "scr-full")
    acked: set[int] = set()
    statuses: list[int] = []
    with ServerProcess(db_url) as server, client(server.url, token) as http:
        seq = 1
        while 503 not in statuses and seq < 200_000:
            records = [
                make_record(device_id="scr-full", seq=s, campaign_id="c" * 60)
                for s in range(seq, seq + 500)
            ]
            response = http.post("/v1/impressions/batch", json=envelope(records, "scr-full"))
            statuses.append(response.status_code)
            if response.status_code == 200:
                acked.update(a["seq"] for a in response.json()["acks"] if a["result"] == "accepted")
            else:
                assert response.status_code == 503, response.text
                assert "full" in response.json()["error"]
                assert response.headers["retry-after"]
            seq += 500
        assert 503 in statuses, "the disk never filled"
        assert http.get("/healthz").status_code in (200, 503)

        # Room again, without restarting the service.
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        records = [make_record(device_id="scr-full", seq=s) for s in range(seq, seq + 100)]
        response = http.post("/v1/impressions/batch", json=envelope(records, "scr-full"))
        assert response.status_code == 200
        acked.update(a["seq"] for a in response.json()["acks"] if a["result"] == "accepted")
        assert http.get("/healthz").status_code == 200
    with sqlite3.connect(small_disk / "playproof.db") as conn:
        stored = {
            row[0]
            for row in conn.execute("SELECT seq FROM impressions WHERE device_id = 'scr-full'")
        }
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    tally.faults, tally.records = statuses.count(503), seq + 99
    tally.lost, tally.doubled = len(acked - stored), len(stored - acked)
    assert acked <= stored, f"{len(acked - stored)} acknowledged records are missing"
    assert stored <= acked, "a batch answered 503 committed nothing"
    assert len(acked) > 500
