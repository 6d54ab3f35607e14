"""Verification as operators see it, on a real server: impression filters and the report.

The plays are decided by the verifier inside `playproof serve` against a catalog
imported through the API; the report and the CLI are checked against the
impressions exported from the same server, counted here.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from playproof.verification import REASONS
from tests.server.reporting import operator_token, post_records
from tests.support import ServerProcess, client, make_record, now_ms, provision

DEVICE = "scr-vrep-1"
SPAN = {"from": "2026-01-01", "to": "2035-01-01", "device_id": DEVICE}
SHOT = "ab" * 32  # named by a play, never uploaded: it waits (pending) for the grace period


def catalog() -> dict[str, Any]:
    """cmp-1 books what tests.support.make_record plays; cmp-shot also wants a screenshot."""
    campaign = {
        "supplier_id": "sup-1",
        "flight": {"from": "2026-01-01", "to": "2099-01-01"},
        "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
        "price": {"model": "per_play", "amount": "0.01", "currency": "EUR"},
    }
    return {
        "suppliers": [{"supplier_id": "sup-1", "name": "Acme", "currency": "EUR"}],
        "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
        "devices": [{"device_id": DEVICE, "zones": 1}],
        "contents": [{"content_id": "cnt-1", "expected_ms": 15000}],
        "campaigns": [
            {"campaign_id": "cmp-1", **campaign},
            {"campaign_id": "cmp-shot", "require_screenshot": True, **campaign},
        ],
    }


# seq: (fields, the decision expected). Plays start 20 s apart, but for the overlapping one.
PLAYS: dict[int, tuple[dict[str, Any], tuple[str | None, list[str]]]] = {
    1: ({}, ("verified", [])),
    2: ({}, ("verified", [])),
    3: ({}, ("failed", ["overlap"])),  # starts 1 s into play 2
    4: ({"campaign_id": "cmp-x"}, ("failed", ["unknown_campaign"])),
    5: (
        {"supplier_id": "sup-2", "content_id": "cnt-2"},
        ("failed", ["content_not_in_campaign", "supplier_mismatch"]),
    ),
    6: ({"end_reason": "skipped", "duration_ms": 2_000}, (None, [])),  # partial: not verified
    7: ({}, ("verified", [])),
    8: (
        {"campaign_id": "cmp-shot", "screenshot_sha256": SHOT, "screenshot_at_ms": 7_500},
        ("pending", []),
    ),
}
OVERLAPPING = 3


def records(base: int) -> list[Any]:
    """The plays of PLAYS, in stored order."""
    out = []
    for seq, (fields, _) in PLAYS.items():
        start = base + seq * 20_000
        if seq == OVERLAPPING:
            start = out[-1].start_ts + 1_000
        out.append(
            make_record(device_id=DEVICE, seq=seq, start_ts=start, end_ts=start + 15_000, **fields)
        )
    return out


@pytest.fixture(scope="module")
def settled(shared_db: str) -> Iterator[tuple[ServerProcess, str]]:
    """A server deciding at once, the plays posted and decided, and an operator token."""
    with ServerProcess(shared_db, "--limit", "verify_settle_ms=0") as server:
        token = operator_token(shared_db, "ops-verification")
        with client(server.url, token) as http:
            answer = http.put("/v1/catalog", json=catalog())
            assert answer.status_code == 200, answer.text
        device_token = provision(shared_db, DEVICE, "store-1")
        post_records(server, device_token, records(now_ms() - 10 * 60_000), DEVICE)
        wait_decided(server, token)
        yield server, token


def get(settled: tuple[ServerProcess, str], path: str, **params: Any) -> Any:
    server, token = settled
    with client(server.url, token) as http:
        return http.get(path, params=params)


def wait_decided(server: ServerProcess, token: str, timeout: float = 60) -> None:
    """Until every valid play but the one waiting for its screenshot is decided (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        with client(server.url, token) as http:
            page = http.get("/v1/impressions", params={"device_id": DEVICE, "status": "valid"})
        found = [i["verification"] for i in page.json()["impressions"]]
        if len(found) == 7 and found.count("pending") == 1:
            return
        assert time.monotonic() < deadline, f"not decided in {timeout} s: {found}"
        time.sleep(0.2)


def exported(settled: tuple[ServerProcess, str]) -> list[dict[str, Any]]:
    text = get(settled, "/v1/impressions", device_id=DEVICE, format="ndjson").text
    return [json.loads(line) for line in text.splitlines()]


def test_every_impression_carries_its_verification_and_every_reason(
    settled: tuple[ServerProcess, str],
) -> None:
    items = get(settled, "/v1/impressions", device_id=DEVICE).json()["impressions"]
    got = {i["seq"]: (i["verification"], i["verification_reasons"]) for i in items}
    assert got == {seq: expected for seq, (_, expected) in PLAYS.items()}
    assert [{k: v for k, v in i.items() if k != "screenshot_url"} for i in items] == exported(
        settled
    ), "NDJSON rows are the JSON page's"
    table = get(settled, "/v1/impressions", device_id=DEVICE, format="csv").text
    rows = {int(r["seq"]): r for r in csv.DictReader(io.StringIO(table))}
    assert rows[5]["verification_reasons"] == "content_not_in_campaign,supplier_mismatch"
    assert (rows[4]["verification"], rows[4]["verification_reasons"]) == (
        "failed",
        "unknown_campaign",
    )
    assert (rows[6]["verification"], rows[6]["verification_reasons"]) == ("", "")


@pytest.mark.parametrize("wanted", ["pending", "verified", "failed"])
def test_impressions_filter_by_verification(
    settled: tuple[ServerProcess, str], wanted: str
) -> None:
    items = get(settled, "/v1/impressions", device_id=DEVICE, verification=wanted).json()
    seqs = [i["seq"] for i in items["impressions"]]
    assert seqs and seqs == [s for s, (_, (v, _)) in PLAYS.items() if v == wanted]


@pytest.mark.parametrize("reason", REASONS)
def test_impressions_filter_by_one_reason_among_several(
    settled: tuple[ServerProcess, str], reason: str
) -> None:
    items = get(settled, "/v1/impressions", device_id=DEVICE, verification_reason=reason).json()
    seqs = [i["seq"] for i in items["impressions"]]
    assert seqs == [s for s, (_, (_, why)) in PLAYS.items() if reason in why]


def test_paging_with_a_verification_filter_resumes_after_its_cursor(
    settled: tuple[ServerProcess, str],
) -> None:
    seen, cursors = [], []
    cursor = None
    while True:
        params = {"device_id": DEVICE, "verification": "failed", "limit": 1}
        body = get(settled, "/v1/impressions", **params, **({"cursor": cursor} if cursor else {}))
        seen += [i["seq"] for i in body.json()["impressions"]]
        if (cursor := body.json()["next_cursor"]) is None:
            break
        cursors.append(cursor)
    assert seen == [3, 4, 5]
    other = get(settled, "/v1/impressions", device_id=DEVICE, limit=1, cursor=cursors[0])
    assert other.status_code == 400, "a cursor made for other filters"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"verification": "billed"}, "pending, verified, failed"),
        ({"verification_reason": "overlaps"}, "unknown_campaign, outside_flight"),
        ({"verification_reason": "lap"}, "`verification_reason`"),
    ],
)
def test_a_bad_verification_filter_is_400_naming_the_allowed_values(
    settled: tuple[ServerProcess, str], params: dict[str, str], says: str
) -> None:
    answer = get(settled, "/v1/impressions", **params)
    assert answer.status_code == 400 and says in answer.json()["error"]


def test_the_report_counts_what_the_export_holds_and_adds_up_to_the_valid_plays(
    settled: tuple[ServerProcess, str],
) -> None:
    rows = exported(settled)
    expected: dict[str, Counter[str]] = {}
    for row in rows:
        if row["status"] == "valid":
            expected.setdefault(row["campaign_id"], Counter())[row["verification"]] += 1
    report = get(settled, "/v1/reports/verification", group_by="campaign_id", **SPAN).json()
    got = {r["campaign_id"]: r for r in report["rows"]}
    assert {c: [r["verified"], r["failed"], r["pending"]] for c, r in got.items()} == {
        c: [n["verified"], n["failed"], n["pending"]] for c, n in expected.items()
    }
    delivery = get(settled, "/v1/reports/delivery", group_by="campaign_id", **SPAN).json()
    assert {r["campaign_id"]: r["valid"] for r in delivery["rows"]} == {
        c: r["verified"] + r["failed"] + r["pending"] for c, r in got.items()
    }
    assert report["totals"] == {"valid": 7, "verified": 3, "failed": 3, "pending": 1}


def test_the_report_by_reason_counts_a_play_under_each_of_its_reasons(
    settled: tuple[ServerProcess, str],
) -> None:
    report = get(
        settled, "/v1/reports/verification", group_by="reason", tz="Asia/Kathmandu", **SPAN
    )
    body = report.json()
    assert [(r["reason"], r["failed"]) for r in body["rows"]] == [
        ("unknown_campaign", 1),
        ("content_not_in_campaign", 1),
        ("supplier_mismatch", 1),
        ("overlap", 1),
    ]
    assert body["totals"] == {"failures": 4, "failed_plays": 3}
    assert "counts once under each" in body["counting"]


def test_the_cli_prints_the_api_csv(settled: tuple[ServerProcess, str]) -> None:
    server, _ = settled
    for groups in ("campaign_id,day", "reason,device_id"):
        api = get(settled, "/v1/reports/verification", group_by=groups, format="csv", **SPAN)
        assert api.headers["content-type"].startswith("text/csv")
        args = ["report", "verification", "--csv", "--db", server.db_url]
        args += ["--from", SPAN["from"], "--to", SPAN["to"], "--group-by", groups]
        cli = subprocess.run(
            [sys.executable, "-m", "playproof", *args, "--filter", f"device_id={DEVICE}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout == api.text
    header, *lines = api.text.splitlines()
    assert header == "reason,device_id,failed" and len(lines) == 4


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"to": "2026-02-01"}, "expected `from`"),
        ({**SPAN, "group_by": "content_id"}, "`group_by` names among reason, campaign_id"),
        ({**SPAN, "group_by": "reason,reason"}, "once"),
        ({**SPAN, "content_id": "cnt-1"}, "'content_id'"),
        ({**SPAN, "tz": "Mars/Olympus"}, "tz"),
    ],
)
def test_a_bad_report_parameter_is_400_saying_what_was_expected(
    settled: tuple[ServerProcess, str], params: dict[str, str], says: str
) -> None:
    answer = get(settled, "/v1/reports/verification", **params)
    assert answer.status_code == 400 and says in answer.json()["error"]
