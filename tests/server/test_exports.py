"""Buyer exports through a real `playproof serve` and the real `playproof export` command."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.reporting import operator_token
from tests.support import ServerProcess, envelope, make_record, now_ms, provision

SELLER = "555"


def catalog() -> dict[str, Any]:
    """scr-e1 has every id; scr-e2 has no SPACE frame id (Playout lists its plays apart)."""
    return {
        "suppliers": [
            {"supplier_id": "sup-1", "currency": "GBP", "external_ids": {"spacebrandid": "4021"}}
        ],
        "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
        "devices": [
            {
                "device_id": "scr-e1",
                "external_ids": {"frame_id": "1234567890", "ad_unit": "au-1"},
            },
            {"device_id": "scr-e2", "external_ids": {"ad_unit": "au-2"}},
        ],
        "contents": [
            {
                "content_id": "cnt-1",
                "expected_ms": 15000,
                "name": 'Cocoa, "hot"',
                "external_ids": {"creative": "cr-9"},
            }
        ],
        "campaigns": [
            {
                "campaign_id": "cmp-1",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-01-01", "to": "2099-01-01"},
                "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
                "price": {"model": "cpm", "amount": "12.5", "currency": "GBP"},
                "impressions_per_play": {"multiplier": "0.125"},
                "external_ids": {"order": "ord-1", "line": "line-3", "spacebuyerid": "1001"},
            }
        ],
    }


class Fleet:
    """Two registered screens of a running service, and the plays they have sent."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.tokens = {d: provision(server.db_url, d, "store-1") for d in ("scr-e1", "scr-e2")}
        self.sent = 0
        # Plays are laid one after another from half an hour ago: none overlaps another.
        self.next_start = now_ms() - 30 * 60_000

    def send(self, device_id: str, count: int) -> None:
        """`count` plays, one after another, each after every play sent before."""
        records = []
        for _ in range(count):
            self.sent += 1
            start, self.next_start = self.next_start, self.next_start + 16_000
            records.append(
                make_record(
                    device_id=device_id, seq=self.sent, start_ts=start, end_ts=start + 15_000
                )
            )
        answer = httpx.post(
            f"{self.server.url}/v1/impressions/batch",
            json=envelope(records, device_id),
            headers={"Authorization": f"Bearer {self.tokens[device_id]}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    def wait_verified(self, count: int, timeout: float = 60) -> None:
        """Poll until `count` plays are verified (bounded; no timing asserted)."""
        path = self.server.db_url.removeprefix("sqlite:///")
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(path) as conn:
                (done,) = conn.execute(
                    "SELECT count(*) FROM impressions WHERE verification = 'verified'"
                ).fetchone()
            if done >= count:
                return
            assert time.monotonic() < deadline, f"{done} of {count} verified in {timeout} s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Fleet]]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('exports') / 'p.db'}"
    limits = ("--limit", "verify_settle_ms=0", "--limit", f"dv360_seller_id={SELLER}")
    with ServerProcess(db_url, *limits) as server:
        ops = operator_token(db_url, "ops")
        put = httpx.put(
            f"{server.url}/v1/catalog",
            json=catalog(),
            headers={"Authorization": f"Bearer {ops}"},
            timeout=30,
        )
        assert put.status_code == 200, put.text
        yield server, ops, Fleet(server)


def get(server: ServerProcess, ops: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {ops}"},
        timeout=30,
    )


def playout_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))


def test_the_playout_route_streams_new_plays_once_and_a_past_export_again_identically(
    served: tuple[ServerProcess, str, Fleet],
) -> None:
    server, ops, fleet = served
    fleet.send("scr-e1", 3)
    fleet.send("scr-e2", 2)
    fleet.wait_verified(5)
    first = get(server, ops, "/v1/exports/playout", since="last")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "text/csv; charset=utf-8"
    export_id = first.headers["x-playproof-export-id"]
    assert (
        first.headers["x-playproof-export-plays"],
        first.headers["x-playproof-export-skipped"],
    ) == ("3", "2")
    rows = playout_rows(first.content)
    assert first.content.endswith(b"\n") and first.content.count(b"\n") == 3
    assert all(len(row) == 19 for row in rows)
    assert {row[0] for row in rows} == {"1234567890"}
    assert {row[14] for row in rows} == {'Cocoa, "hot"'}
    assert b'"Cocoa, ""hot"""' in first.content

    again = get(server, ops, "/v1/exports/playout", since="last")
    assert again.headers["x-playproof-export-plays"] == "0" and again.content == b""

    same = get(server, ops, "/v1/exports/playout", export_id=export_id)
    assert same.content == first.content
    assert same.headers["x-playproof-export-id"] == export_id

    summary = get(server, ops, f"/v1/exports/{export_id}").json()
    assert summary["plays"] == 3 and summary["skipped"] == 2
    assert summary["skipped_by_reason"] == {"missing_external_id:frame_id": 2}
    skipped = get(server, ops, f"/v1/exports/{export_id}/skipped").json()["skipped"]
    assert {(s["device_id"], tuple(s["reasons"]), s["final"]) for s in skipped} == {
        ("scr-e2", ("missing_external_id:frame_id",), False)
    }
    as_csv = get(server, ops, f"/v1/exports/{export_id}/skipped", format="csv").text
    assert as_csv.splitlines()[0] == "device_id,journal_id,seq,start_ts,end_ts,reasons,final"


def test_the_dv360_route_sends_batch_bodies_for_the_configured_or_given_seller(
    served: tuple[ServerProcess, str, Fleet],
) -> None:
    server, ops, fleet = served
    fleet.send("scr-e1", 2)
    fleet.wait_verified(7)
    given = get(server, ops, "/v1/exports/dv360", since="last", seller_id="42")
    assert given.status_code == 200, given.text
    assert given.headers["content-type"] == "application/x-ndjson"
    (line,) = given.content.splitlines()
    requests = json.loads(line)["requests"]
    assert len(requests) == 7, "every verified play, scr-e2's too: DV360 needs no frame"
    assert {r["parent"] for r in requests} == {"sellers/42"}
    assert {r["adPlay"]["impressionCount"] for r in requests} == {0.125}
    export_id = given.headers["x-playproof-export-id"]
    nothing = get(server, ops, f"/v1/exports/{export_id}/skipped", format="ndjson")
    assert (nothing.status_code, nothing.content) == (200, b""), "none listed apart"
    empty = get(server, ops, f"/v1/exports/{export_id}/skipped").json()
    assert empty == {"export_id": int(export_id), "skipped": []}
    fleet.send("scr-e1", 1)
    fleet.wait_verified(8)
    default = get(server, ops, "/v1/exports/dv360", since="last")
    (line,) = default.content.splitlines()
    assert [r["parent"] for r in json.loads(line)["requests"]] == [f"sellers/{SELLER}"]


def test_export_routes_refuse_bad_parameters_and_need_an_operator(
    served: tuple[ServerProcess, str, Fleet],
) -> None:
    server, ops, _ = served
    assert get(server, ops, "/v1/exports/playout").status_code == 400
    assert get(server, ops, "/v1/exports/playout", since="yesterday").status_code == 400
    assert get(server, ops, "/v1/exports/playout", seller_id="1", since="last").status_code == 400
    assert get(server, ops, "/v1/exports/playout", export_id="99999").status_code == 404
    assert get(server, ops, "/v1/exports/99999").status_code == 404
    assert get(server, ops, "/v1/exports/x/skipped").status_code == 400
    anonymous = httpx.get(f"{server.url}/v1/exports/playout?since=last", timeout=30)
    assert anonymous.status_code == 401


def test_the_cli_exports_what_the_service_has_not_and_writes_a_past_export_identically(
    served: tuple[ServerProcess, str, Fleet], tmp_path: Path
) -> None:
    server, ops, fleet = served
    get(server, ops, "/v1/exports/playout", since="last")  # everything so far is out
    fleet.send("scr-e1", 2)
    fleet.wait_verified(10)
    out, skipped = tmp_path / "playout.csv", tmp_path / "skipped.csv"
    made = playproof(
        "export", "playout", "--since-last", "--db", server.db_url,
        "--out", str(out), "--skipped", str(skipped),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # scr-e2's plays still have no frame: tried again, and listed apart again.
    assert "(playout): 2 plays, 2 listed apart (missing_external_id:frame_id 2)" in made.stderr
    export_id = made.stderr.split()[1]
    assert len(playout_rows(out.read_bytes())) == 2
    header, *apart = skipped.read_text().splitlines()
    assert header == "device_id,journal_id,seq,start_ts,end_ts,reasons,final"
    assert [row.split(",")[0] for row in apart] == ["scr-e2", "scr-e2"]
    again = playproof("export", "playout", "--id", export_id, "--db", server.db_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout == out.read_text()
    assert get(server, ops, "/v1/exports/playout", export_id=export_id).content == out.read_bytes()
    refused = playproof("export", "dv360", "--since-last", "--db", server.db_url)
    assert refused.returncode == 1 and "seller_id" in refused.stderr


def test_the_cli_takes_the_dv360_seller_from_its_environment_but_not_for_a_past_export(
    served: tuple[ServerProcess, str, Fleet],
) -> None:
    server, _, fleet = served
    fleet.send("scr-e1", 1)
    fleet.wait_verified(fleet.sent)
    env = {"PLAYPROOF_DV360_SELLER_ID": "777"}
    made = playproof("export", "dv360", "--since-last", "--db", server.db_url, env=env)
    assert made.returncode == 0, made.stderr
    requests = [r for line in made.stdout.splitlines() for r in json.loads(line)["requests"]]
    assert requests and {r["parent"] for r in requests} == {"sellers/777"}
    export_id = made.stderr.split()[1]
    env = {"PLAYPROOF_DV360_SELLER_ID": "888"}
    again = playproof("export", "dv360", "--id", export_id, "--db", server.db_url, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == made.stdout, "a past export is what it was"


def playproof(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "playproof", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
