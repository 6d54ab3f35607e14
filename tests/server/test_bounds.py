"""One device cannot break the billing reports: durations and times are bounded, sums clamped.

A device once claimed `duration_ms` of 2^53 - 1 and had it accepted `valid`: two
such batches in a group commit failed every batch of the group, and after separate
commits `GET /v1/reports/delivery` answered 503 ("integer overflow") for everyone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from pathlib import Path

from playproof.rules import HOUR_MS
from tests.server.reporting import operator_token, post_records
from tests.stores.version2 import DURATIONS, HUGE, sqlite_at_version_2
from tests.support import ServerProcess, client, make_record, now_ms, provision

DAY_MS = 24 * HOUR_MS
_ids = count(1)


def day(ms: int) -> str:
    """The UTC date of an epoch-ms time, as the report's `from` and `to` take it."""
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def test_huge_durations_are_rejected_invalid_and_the_delivery_report_still_answers(
    server: ServerProcess,
) -> None:
    device_id = f"scr-bounds-{next(_ids)}"
    token = provision(server.db_url, device_id, "store-1")
    operator = operator_token(server.db_url, f"ops-bounds-{device_id}")
    end = now_ms() - 1_000
    for first in (1, 601):
        # 599 hostile plays and one honest one a batch: only the hostile ones are refused.
        hostile = range(first, first + 599)
        records = [
            make_record(device_id=device_id, seq=s, end_ts=end, duration_ms=HUGE) for s in hostile
        ]
        records.append(make_record(device_id=device_id, seq=first + 599, end_ts=end))
        acks = post_records(server, token, records, device_id)
        assert [(a["result"], a.get("reason")) for a in acks] == [("rejected", "invalid")] * 599 + [
            ("accepted", None)
        ]
    with client(server.url, operator) as http:
        listed = http.get("/v1/rejects", params={"device_id": device_id, "limit": 3}).json()
        assert [r["detail"] for r in listed["rejects"]] == [
            f"expected duration_ms of at most {DAY_MS}, got {HUGE}"
        ] * 3
        span = {"from": day(end - DAY_MS), "to": day(end + DAY_MS), "device_id": device_id}
        report = http.get("/v1/reports/delivery", params=span)
    assert report.status_code == 200, report.text
    totals = report.json()["totals"]
    assert (totals["plays"], totals["valid"], totals["played_s"]) == (2, 2, 30.0)


def test_a_database_whose_rollups_old_code_damaged_is_repaired_and_reported_exactly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    sqlite_at_version_2(str(path))
    with ServerProcess(f"sqlite:///{path}") as served:
        operator = operator_token(served.db_url, "ops-repaired")
        with client(served.url, operator) as http:
            span = {"from": "2026-03-06", "to": "2026-03-07", "group_by": "campaign_id"}
            report = http.get("/v1/reports/delivery", params=span)
    assert report.status_code == 200, report.text
    plays, played_ms = len(DURATIONS), 3 * DAY_MS + 15_000
    [row] = report.json()["rows"]
    assert (row["campaign_id"], row["plays"], row["valid"], row["played_s"]) == (
        "cmp-1",
        plays,
        plays,
        played_ms / 1000,
    )
    assert report.json()["totals"]["played_s"] == played_ms / 1000
