"""The billing statement on real `playproof serve` processes: the route, the CLI, finality.

Two suppliers are booked, one paying per play in EUR and one per thousand
impressions in JPY. Their screens post plays to a server on the real clock,
whose verifier decides them; the statement is then provisional (its period is
hardly over). A second server on the same database, its clock simulated two days
later, finds the period settled and makes the statement final; a catalog
correction afterwards arrives as an adjustment on the next period's statement,
and the final one is answered byte for byte, by the route and by the CLI.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from playproof.billing import CSV_COLUMNS
from playproof.rules import HOUR_MS
from playproof.server.formats import rfc3339
from tests.server.reporting import operator_token, post_records
from tests.support import ServerProcess, client, make_record, now_ms, provision

DAY = 24 * HOUR_MS
SCREENS = {"scr-bill-1": "store-1", "scr-bill-2": "store-2"}
LINE = {
    "scr-bill-1": {"campaign_id": "cmp-pp", "ad_group_id": "ag-e", "content_id": "cnt-e"},
    "scr-bill-2": {"campaign_id": "cmp-cpm", "ad_group_id": "ag-j", "content_id": "cnt-j"},
}
SUPPLIER = {"scr-bill-1": "sup-e", "scr-bill-2": "sup-j"}


def catalog(pp_stores: list[str] | None = None, cpm_price: str = "1500") -> dict[str, Any]:
    """cmp-pp: 0.0125 EUR a play for sup-e; cmp-cpm: JPY per mille, 2.5 impressions a play."""
    flight = {"from": "2020-01-01", "to": "2099-01-01"}
    return {
        "suppliers": [
            {"supplier_id": "sup-e", "name": "Euro Brands", "currency": "EUR"},
            {"supplier_id": "sup-j", "name": "Nippon Ads", "currency": "JPY"},
        ],
        "stores": [
            {"store_id": "store-1", "time_zone": "Europe/London"},
            {"store_id": "store-2", "time_zone": "Asia/Tokyo"},
            {"store_id": "store-9", "time_zone": "Europe/Paris"},
        ],
        "devices": [{"device_id": d, "zones": 1} for d in SCREENS],
        "contents": [{"content_id": c, "expected_ms": 15000} for c in ("cnt-e", "cnt-j")],
        "campaigns": [
            {
                "campaign_id": "cmp-pp",
                "supplier_id": "sup-e",
                "flight": flight,
                "targets": {"stores": pp_stores or [], "devices": []},
                "ad_groups": [{"ad_group_id": "ag-e", "contents": ["cnt-e"]}],
                "price": {"model": "per_play", "amount": "0.0125", "currency": "EUR"},
            },
            {
                "campaign_id": "cmp-cpm",
                "supplier_id": "sup-j",
                "flight": flight,
                "ad_groups": [{"ad_group_id": "ag-j", "contents": ["cnt-j"]}],
                "price": {"model": "cpm", "amount": cpm_price, "currency": "JPY"},
                "impressions_per_play": {"multiplier": "2.5", "sourcetype": 1, "vendor": "aud"},
            },
        ],
    }


def records(screen: str, n: int, base: int, **extra: Any) -> list[Any]:
    """`n` plays of the screen's line, 20 s apart from `base`, then `extra` ones as given."""
    fields = {**LINE[screen], "supplier_id": SUPPLIER[screen], "store_id": SCREENS[screen]}
    out = [
        make_record(device_id=screen, seq=i + 1, start_ts=base + i * 20_000,
                    end_ts=base + i * 20_000 + 15_000, **fields)
        for i in range(n)
    ]  # fmt: skip
    for i, changes in enumerate(extra.values(), n + 1):
        start = base + (i - 1) * 20_000
        end = start + changes.pop("length", 15_000)
        out.append(
            make_record(device_id=screen, seq=i, start_ts=start, end_ts=end, **(fields | changes))
        )
    return out


class Billing:
    """The shared database, the period the plays fall in, and an operator token."""

    def __init__(self, db_url: str, token: str, period: tuple[int, int]) -> None:
        self.db_url = db_url
        self.token = token
        self.period = period

    def query(self, period: tuple[int, int] | None = None, **filters: str) -> dict[str, str]:
        start, end = period or self.period
        return {"from": rfc3339(start) or "", "to": rfc3339(end) or "", **filters}

    def cli(self, period: tuple[int, int] | None = None, *flags: str) -> str:
        query = self.query(period)
        args = ["report", "billing", "--from", query["from"], "--to", query["to"], *flags]
        done = subprocess.run(
            [sys.executable, "-m", "playproof", *args, "--db", self.db_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def statement(server: ServerProcess, token: str, params: dict[str, str]) -> Any:
    with client(server.url, token) as http:
        return http.get("/v1/reports/billing", params=params)


def settle(server: ServerProcess, token: str, timeout: float = 60) -> None:
    """Until the verifier has decided every valid play (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        with client(server.url, token) as http:
            status = http.get("/v1/verification").json()
        if status["pending"] == 0:
            return
        assert time.monotonic() < deadline, f"still pending after {timeout} s: {status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def played(shared_db: str) -> Iterator[tuple[Billing, ServerProcess]]:
    """Both screens' plays posted and decided on a server on the real clock."""
    now = now_ms()
    hour = now // HOUR_MS * HOUR_MS
    with ServerProcess(shared_db, "--limit", "verify_settle_ms=0") as server:
        token = operator_token(shared_db, "ops-billing")
        with client(server.url, token) as http:
            answer = http.put("/v1/catalog", json=catalog())
            assert answer.status_code == 200, answer.text
        base = now - 10 * 60_000
        extra = {
            "unbooked": {"campaign_id": "cmp-zz"},
            "partial": {"length": 3_000, "duration_ms": 3_000, "end_reason": "skipped"},
        }
        for screen, store_id in SCREENS.items():
            device_token = provision(shared_db, screen, store_id)
            plays = records(screen, 6 if screen == "scr-bill-1" else 4, base, **(
                extra if screen == "scr-bill-1" else {}))  # fmt: skip
            acks = post_records(server, device_token, plays, screen)
            assert all(a["result"] == "accepted" for a in acks), acks
        settle(server, token)
        yield Billing(shared_db, token, (hour - 2 * HOUR_MS, hour + HOUR_MS)), server


def lines_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["campaign_id"]: line for line in document["lines"]}


def test_the_route_prices_each_line_and_totals_each_currency_apart(
    played: tuple[Billing, ServerProcess],
) -> None:
    billing, server = played
    answer = statement(server, billing.token, billing.query())
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["status"] == "provisional", "the period has hardly ended"
    got = lines_of(doc)
    assert {k: (v["billable_plays"], v["impressions"], v["amount"]) for k, v in got.items()} == {
        "cmp-pp": (6, "6", "0.08"),  # 0.075 EUR, half-even to cents
        "cmp-zz": (0, "0", "0.00"),
        "cmp-cpm": (4, "10", "15"),  # 10 impressions at 1500 JPY a mille
    }
    assert (got["cmp-pp"]["plays"], got["cmp-pp"]["partial"]) == (7, 1)
    assert got["cmp-zz"]["failed_by_reason"] == {"unknown_campaign": 1}
    assert (got["cmp-cpm"]["sourcetype"], got["cmp-cpm"]["vendor"]) == (1, "aud")
    by_currency = {t["currency"]: t["amount_due"] for t in doc["totals"]["by_currency"]}
    assert by_currency == {"EUR": "0.08", "JPY": "15"}
    assert "half-even" in doc["rounding"] and len(doc["digest"]) == 64
    alone = statement(server, billing.token, billing.query(supplier_id="sup-j")).json()
    assert [line["campaign_id"] for line in alone["lines"]] == ["cmp-cpm"]


def test_the_route_refuses_what_it_cannot_answer(played: tuple[Billing, ServerProcess]) -> None:
    billing, server = played
    assert statement(server, "", billing.query()).status_code == 401
    missing = statement(server, billing.token, {"from": billing.query()["from"]})
    assert missing.status_code == 400 and "`to`" in missing.json()["error"]
    unknown = statement(server, billing.token, billing.query(device_id="scr-bill-1"))
    assert unknown.status_code == 400, "a misspelt filter never widens a statement"


def test_the_cli_prints_the_numbers_the_route_answers(
    played: tuple[Billing, ServerProcess],
) -> None:
    billing, server = played
    api = statement(server, billing.token, billing.query())
    assert billing.cli(None, "--json").rstrip("\n").encode() == api.content
    doc = api.json()
    rows = list(csv.reader(io.StringIO(billing.cli(None, "--csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_name = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    for line, row in zip(doc["lines"], by_name, strict=True):
        for field in ("supplier_id", "campaign_id", "plays", "pending", "impressions", "amount"):
            assert row[field] == str(line[field])
    table = billing.cli()
    for text in (doc["digest"], "provisional", "0.08", "EUR", "15", "JPY", "unknown_campaign"):
        assert text in table


@pytest.fixture(scope="module")
def later(played: tuple[Billing, ServerProcess]) -> Iterator[tuple[Billing, ServerProcess]]:
    """The same database served on a clock two days later: the period has settled."""
    billing, first = played
    first.stop()
    real = now_ms()
    clock = f"speed=1,anchor={real},epoch={real + 2 * DAY}"
    with ServerProcess(billing.db_url, "--sim-clock", clock, "--limit", "verify_settle_ms=0") as s:
        yield billing, s


def test_a_settled_period_is_final_kept_and_corrected_on_the_next_statement(
    later: tuple[Billing, ServerProcess],
) -> None:
    billing, server = later
    final = statement(server, billing.token, billing.query())
    assert final.json()["status"] == "final" and final.json()["finalized_at"]
    assert billing.cli(None, "--json").rstrip("\n").encode() == final.content

    # The catalog is corrected: cmp-pp was booked on store-9 only, cmp-cpm at 1800 JPY.
    with client(server.url, billing.token) as http:
        fixed = http.put("/v1/catalog", json=catalog(pp_stores=["store-9"], cpm_price="1800"))
        assert fixed.status_code == 200, fixed.text
    settle(server, billing.token)
    assert statement(server, billing.token, billing.query()).content == final.content
    start, end = billing.period
    following = (end, end + HOUR_MS)
    nxt = statement(server, billing.token, billing.query(following)).json()
    assert nxt["status"] == "final" and nxt["lines"] == []
    corrected = {
        a["campaign_id"]: (a["period_from"], a["billable_plays"], a["amount"], a["currency"])
        for a in nxt["adjustments"]
    }
    assert corrected == {
        "cmp-pp": (rfc3339(start), -6, "-0.08", "EUR"),
        "cmp-cpm": (rfc3339(start), 0, "3", "JPY"),
    }
    named = next(a["plays"] for a in nxt["adjustments"] if a["campaign_id"] == "cmp-pp")
    assert [(p["device_id"], p["seq"]) for p in named] == [("scr-bill-1", s) for s in range(1, 7)]
    due = {t["currency"]: t["amount_due"] for t in nxt["totals"]["by_currency"]}
    assert due == {"EUR": "-0.08", "JPY": "3"}
    after = (following[1], following[1] + HOUR_MS)
    assert statement(server, billing.token, billing.query(after)).json()["adjustments"] == [], (
        "each correction is billed once"
    )
    assert billing.cli(None, "--json").rstrip("\n").encode() == final.content
