"""The operators' API on a real server: pages, exports, reports, rejects, devices, screenshots."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from playproof.rules import HOUR_MS, MINUTE_MS
from playproof.server.formats import rfc3339
from tests.server.reporting import every_device, operator_token, post_records, upload_png
from tests.support import ServerProcess, client, make_record, now_ms, png, provision

_ids = count(1)


class Screen:
    """A registered device of a test's own, posting plays, and an operator to read them."""

    def __init__(self, server: ServerProcess, operator: str) -> None:
        self.server = server
        self.device_id = f"scr-rep-{next(_ids)}"
        self.token = provision(server.db_url, self.device_id, "store-1")
        self.operator = operator
        self.seq = 0

    def play(self, n: int, **fields: Any) -> list[dict[str, Any]]:
        """`n` plays, posted in one batch; their acks."""
        records = []
        for _ in range(n):
            self.seq += 1
            records.append(make_record(device_id=self.device_id, seq=self.seq, **fields))
        return post_records(self.server, self.token, records, self.device_id)

    def get(self, path: str, **params: Any) -> Any:
        """An operator GET."""
        with client(self.server.url, self.operator) as http:
            return http.get(path, params=params)


@pytest.fixture(scope="module")
def operator(server: ServerProcess) -> str:
    return operator_token(server.db_url, "ops-reports")


@pytest.fixture
def screen(server: ServerProcess, operator: str) -> Screen:
    return Screen(server, operator)


def spread(screen: Screen, n: int, end: int) -> None:
    """`n` plays ending a minute apart before `end`, campaigns and statuses mixed."""
    for i in range(n):
        screen.play(
            1,
            end_ts=end - i * MINUTE_MS,
            campaign_id=f"cmp-{i % 3}",
            end_reason="completed" if i % 4 else "skipped",
            duration_ms=15_000 if i % 4 else 4_321,
        )


def page_all(screen: Screen, limit: int, between: Any = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"device_id": screen.device_id, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        body = screen.get("/v1/impressions", **params).json()
        items += body["impressions"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        if between:
            between()


def test_pages_hold_every_impression_once_while_records_arrive(screen: Screen) -> None:
    now = now_ms()
    spread(screen, 60, now - 2 * HOUR_MS)
    before = {i["seq"] for i in page_all(screen, 1000)}
    late = iter(range(1000))

    def insert() -> None:
        # Plays that started before and after the cursor's place, as in a live fleet.
        i = next(late)
        screen.play(1, end_ts=now - 3 * HOUR_MS + i * 1000)
        screen.play(1, end_ts=now - 1000 - i)

    items = page_all(screen, 7, between=insert)
    keys = [(i["start_ts"], i["device_id"], i["journal_id"], i["seq"]) for i in items]
    assert keys == sorted(keys)
    assert len(keys) == len(set(keys))
    assert before <= {i["seq"] for i in items}


def test_exports_stream_the_same_rows_as_the_pages(screen: Screen) -> None:
    spread(screen, 40, now_ms() - HOUR_MS)
    pages = page_all(screen, 9)
    ndjson = screen.get("/v1/impressions", device_id=screen.device_id, format="ndjson")
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert lines == [{k: v for k, v in i.items() if k != "screenshot_url"} for i in pages]
    with client(screen.server.url, screen.operator) as http:
        exported = http.get(
            "/v1/impressions",
            params={"device_id": screen.device_id},
            headers={"Accept": "text/csv"},
        )
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["seq"]) for r in rows] == [i["seq"] for i in pages]
    first, item = rows[0], pages[0]
    assert (
        first["start_ts"] == item["start_ts"] and float(first["duration_s"]) == item["duration_s"]
    )
    assert first["clock_synced"] == "true" and first["flags"] == ";".join(item["flags"])
    limited = screen.get("/v1/impressions", device_id=screen.device_id, format="csv", limit=5)
    assert len(limited.text.splitlines()) == 6


def test_times_are_rfc3339_utc_and_durations_seconds_to_the_millisecond(screen: Screen) -> None:
    end = (now_ms() // 1000 - 60) * 1000 + 123
    screen.play(1, end_ts=end, duration_ms=14_987, clock_offset_ms=-12)
    [item] = screen.get("/v1/impressions", device_id=screen.device_id).json()["impressions"]
    when = datetime.fromtimestamp(end // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert item["end_ts"] == f"{when}.123Z"
    assert item["start_ts"] == rfc3339(end - 15_000)
    assert (item["duration_s"], item["expected_s"], item["clock_offset_s"]) == (
        14.987,
        15.0,
        -0.012,
    )


def test_the_delivery_report_reconciles_exactly_with_the_exported_rows(screen: Screen) -> None:
    spread(screen, 50, now_ms() - HOUR_MS)
    screen.play(1, end_ts=now_ms() - 3 * HOUR_MS, campaign_id="cmp-earlier")
    rows = [
        json.loads(line)
        for line in screen.get(
            "/v1/impressions", device_id=screen.device_id, format="ndjson"
        ).text.splitlines()
    ]
    expected: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        sums = expected.setdefault((row["campaign_id"], row["start_ts"][:10]), [0, 0, 0, 0])
        sums[0] += 1
        sums[1] += row["status"] == "valid"
        sums[2] += round(row["duration_s"] * 1000)
        sums[3] += row["quality"]
    span = {"from": "2026-01-01", "to": "2027-06-01", "device_id": screen.device_id}
    report = screen.get("/v1/reports/delivery", group_by="campaign_id,day", **span).json()
    got = {
        (r["campaign_id"], r["day"]): [r["plays"], r["valid"], round(r["played_s"] * 1000)]
        for r in report["rows"]
    }
    assert got == {k: v[:3] for k, v in expected.items()}
    assert report["totals"]["plays"] == len(rows) == 51
    for r in report["rows"]:
        sums = expected[(r["campaign_id"], r["day"])]
        assert r["partial"] == sums[0] - sums[1]
        assert r["mean_quality"] == round(sums[3] / sums[0], 2)
    api_csv = screen.get(
        "/v1/reports/delivery", group_by="campaign_id,day", format="csv", **span
    ).text
    args = ["report", "delivery", "--csv", "--db", screen.server.db_url, "--from", span["from"]]
    args += ["--to", span["to"], "--group-by", "campaign_id,day"]
    cli = subprocess.run(
        [sys.executable, "-m", "playproof", *args, "--filter", f"device_id={screen.device_id}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == api_csv


def test_the_report_groups_by_local_day_and_hour_in_a_named_zone(screen: Screen) -> None:
    end = now_ms() - 10 * MINUTE_MS
    screen.play(2, end_ts=end)
    start = end - 15_000
    local = datetime.fromtimestamp(start / 1000, ZoneInfo("Asia/Kolkata"))
    hour_start = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    span = {"from": "2026-01-01", "to": "2030-01-01", "device_id": screen.device_id}
    rows = screen.get(
        "/v1/reports/delivery", group_by="day,hour", tz="Asia/Kolkata", **span
    ).json()["rows"]
    expected_hour = hour_start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert [(r["day"], r["hour"], r["plays"]) for r in rows] == [
        (local.date().isoformat(), expected_hour, 2)
    ]
    assert expected_hour[14:16] == "30"  # Kolkata's hours start at half past, in UTC


BAD = [
    ("/v1/reports/delivery", {"to": "2026-02-01"}, "expected `from`"),
    ("/v1/reports/delivery", {"from": "yesterday", "to": "2026-02-01"}, "RFC 3339"),
    ("/v1/reports/delivery", {"from": "2026-01-01T00:00:00", "to": "2026-02-01"}, "offset"),
    ("/v1/reports/delivery", {"from": "2026-02-01", "to": "2026-01-01"}, "before `to`"),
    (
        "/v1/reports/delivery",
        {"from": "2026-01-01", "to": "2026-02-01", "tz": "Mars/Olympus"},
        "tz",
    ),
    (
        "/v1/reports/delivery",
        {"from": "2026-01-01", "to": "2026-02-01", "group_by": "week"},
        "week",
    ),
    (
        "/v1/reports/delivery",
        {"from": "2026-01-01", "to": "2026-02-01", "group_by": "day,day"},
        "once",
    ),
    ("/v1/reports/delivery", {"from": "1969-12-31", "to": "2026-02-01"}, "1970"),
    ("/v1/reports/delivery", {"from": "2000-01-01", "to": "2026-02-01"}, "3660 days"),
    ("/v1/impressions", {"campaign": "cmp-1"}, "'campaign'"),
    ("/v1/impressions", {"campaign_id": "bad id"}, "`campaign_id`"),
    ("/v1/impressions", {"status": "billed"}, "`status`"),
    ("/v1/impressions", {"limit": "0"}, "`limit`"),
    ("/v1/impressions", {"limit": "1001"}, "`limit`"),
    ("/v1/impressions", {"cursor": "!!!"}, "`cursor`"),
    ("/v1/impressions", {"format": "xml"}, "`format`"),
    ("/v1/rejects", {"reason": "late"}, "`reason`"),
    ("/v1/reports/rejects", {"group_by": "supplier_id"}, "group_by"),
    ("/v1/live", {"seconds": "99999"}, "`seconds`"),
    ("/v1/devices", {"limit": "0"}, "`limit`"),
    ("/v1/devices", {"limit": "1001"}, "`limit`"),
    ("/v1/devices", {"cursor": "!!!"}, "`cursor`"),
    ("/v1/impressions/scr-1/j-1/zero/screenshot", {}, "sequence"),
]


@pytest.mark.parametrize(("route", "params", "says"), BAD, ids=[f"{r}-{s}" for r, _, s in BAD])
def test_every_bad_parameter_answers_400_saying_what_was_expected(
    screen: Screen, route: str, params: dict[str, str], says: str
) -> None:
    response = screen.get(route, **params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert says in error and "expected" in error


def test_a_cursor_made_for_other_filters_is_refused(screen: Screen) -> None:
    spread(screen, 3, now_ms() - HOUR_MS)
    cursor = screen.get("/v1/impressions", device_id=screen.device_id, limit=1).json()
    assert cursor["next_cursor"]
    other = screen.get("/v1/impressions", limit=1, cursor=cursor["next_cursor"])
    assert other.status_code == 400 and "same filters" in other.json()["error"]


def test_the_proof_screenshot_is_served_and_missing_ones_are_404(screen: Screen) -> None:
    image = png(5, 3)
    sha = upload_png(screen.server, screen.token, image)
    screen.play(1, screenshot_sha256=sha, screenshot_at_ms=7_000)
    screen.play(1, screenshot_sha256="ab" * 32, screenshot_at_ms=7_000)
    screen.play(1)
    [shown, pending, none] = screen.get("/v1/impressions", device_id=screen.device_id).json()[
        "impressions"
    ]
    got = screen.get(shown["screenshot_url"])
    assert got.status_code == 200 and got.content == image
    assert got.headers["content-type"] == "image/png"
    assert screen.get(pending["screenshot_url"]).status_code == 404
    assert none["screenshot_url"] is None
    base = f"/v1/impressions/{screen.device_id}/j-1"
    assert screen.get(f"{base}/{none['seq']}/screenshot").status_code == 404
    assert screen.get(f"{base}/999/screenshot").status_code == 404


def test_devices_report_health_with_problems_named(screen: Screen) -> None:
    screen.play(1)
    screen.seq += 5  # a gap of five
    screen.play(1)
    with client(screen.server.url, screen.token) as http:
        sent = now_ms() - 20 * MINUTE_MS
        status = {
            "type": "status",
            "device_id": screen.device_id,
            "journal_id": "j-1",
            "sent_at": sent,
            "queue_depth": 12,
            "drift_ppm": 250.5,
            "last_sync_ts": None,
            "evicted": 2,
            "evicted_ranges": [[3, 4]],
        }
        assert http.post("/v1/devices/status", json=status).status_code == 204
    devices = every_device(screen.server, screen.operator)
    [mine] = [d for d in devices if d["device_id"] == screen.device_id]
    # The gap 2..6 less the evicted 3..4: those will never come, and are not missing.
    assert mine["high_water"] == 7 and mine["open_gaps"] == 2 and mine["missing"] == 3
    assert (mine["queue_depth"], mine["drift_ppm"], mine["evicted_total"]) == (12, 250.5, 2)
    assert mine["clock_state"] == "never" and mine["last_skew_ms"] < -19 * MINUTE_MS
    assert {"skewed", "drifting", "unsynced", "gaps"} <= set(mine["problems"])
    assert "offline" not in mine["problems"]
    detail = screen.get(f"/v1/devices/{screen.device_id}").json()
    assert detail["journals"][0]["open_gaps"] == [[2, 2], [5, 6]]
    assert detail["evicted_ranges"] == [["j-1", 3, 4]]
    assert screen.get("/v1/devices/scr-nobody").status_code == 404
    table = screen.get("/v1/devices", format="csv").text
    assert screen.device_id in table and table.startswith("device_id,store_id,last_seen")


def test_rejects_are_listed_newest_first_and_counted_by_reason(screen: Screen) -> None:
    stale = [
        make_record(device_id=screen.device_id, seq=s, end_ts=now_ms() - 5 * HOUR_MS)
        for s in (1, 2, 3)
    ]
    post_records(screen.server, screen.token, stale, screen.device_id)
    future = make_record(device_id=screen.device_id, seq=4, end_ts=now_ms() + HOUR_MS)
    post_records(screen.server, screen.token, [future], screen.device_id, sent_at=now_ms())
    listed = screen.get("/v1/rejects", device_id=screen.device_id, limit=2).json()
    assert [r["seq"] for r in listed["rejects"]] == [4, 3]
    rest = screen.get(
        "/v1/rejects", device_id=screen.device_id, limit=2, cursor=listed["next_cursor"]
    ).json()
    assert [r["seq"] for r in rest["rejects"]] == [2, 1]
    stale_only = screen.get("/v1/rejects", device_id=screen.device_id, reason="stale").json()
    assert {r["reason"] for r in stale_only["rejects"]} == {"stale"}
    counts = screen.get(
        "/v1/reports/rejects", device_id=screen.device_id, group_by="reason"
    ).json()["rows"]
    assert Counter({r["reason"]: r["records"] for r in counts}) == Counter(
        {"stale": 3, "future_timestamp": 1}
    )


def test_live_counts_what_was_answered_and_metrics_observe_commits(screen: Screen) -> None:
    screen.play(4)
    live = screen.get("/v1/live", seconds=60, step=5).json()
    assert sum(live["accepted"]) >= 4 and len(live["t"]) == len(live["accepted"]) == 12
    metrics = screen.get("/metrics").text
    assert "playproof_commit_records_count" in metrics


def test_the_dashboard_page_and_its_assets_are_served(screen: Screen) -> None:
    with client(screen.server.url) as http:
        page = http.get("/")
        chart = http.get("/static/uPlot.iife.min.js")
        script = http.get("/static/dashboard.js")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="login-form"' in page.text
    assert chart.status_code == 200 and chart.text.startswith(
        "/*! https://github.com/leeoniya/uPlot"
    )
    assert script.status_code == 200


def test_device_pages_hold_every_device_once_by_id_and_end_with_no_cursor(screen: Screen) -> None:
    for n in range(3):
        provision(screen.server.db_url, f"scr-page-{n}")
    whole = every_device(screen.server, screen.operator)
    ids = [d["device_id"] for d in whole]
    assert ids == sorted(set(ids)) and len(ids) >= 4
    assert [d["device_id"] for d in every_device(screen.server, screen.operator, 2)] == ids
    first = screen.get("/v1/devices", limit=len(ids)).json()
    assert [d["device_id"] for d in first["devices"]] == ids and first["next_cursor"]
    assert screen.get("/v1/devices", cursor=first["next_cursor"]).json() == {
        "devices": [],
        "next_cursor": None,
    }
    # The export is still every device, whatever the page size.
    table = screen.get("/v1/devices", format="csv").text.splitlines()[1:]
    assert [line.split(",")[0] for line in table] == ids
