"""Device health: lost sequences and ranges, resets, evictions counted once (real server).

The routes are `GET /v1/devices` and `GET /v1/devices/{id}` with an operator token. The
service runs with a 20-second offline limit (`--rule offline_limit_ms=20000`). A gap
becomes lost once its neighbours are older than that on the service's clock, and a
record older than that when sent is stale: so records are sent a second short of the
limit, and the test waits (bounded polling, no timing asserted) for their gaps to
become lost. A gap next to a record just made stays open for the whole limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import count, pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.server.sequences import evicted_count, merged, outside
from tests.server.reporting import every_device, operator_token, post_records
from tests.support import ServerProcess, client, make_record, now_ms, provision

SECOND_MS = 1000
LIMIT_MS = 20 * SECOND_MS
# Sent this old, a record is accepted, and its gaps are lost a second later.
NEARLY_STALE_MS = LIMIT_MS - SECOND_MS
WAIT_S = 30.0  # a deadline for a condition, not a speed
MAX_GAPS = 20  # open gaps a journal may hold: no other test comes near it
_ids = count(1)


@pytest.fixture(scope="module")
def server(shared_db: str) -> Iterator[ServerProcess]:
    rules = ("--rule", f"offline_limit_ms={LIMIT_MS}", "--rule", f"max_open_gaps={MAX_GAPS}")
    with ServerProcess(shared_db, *rules) as proc:
        yield proc


@pytest.fixture(scope="module")
def operator(server: ServerProcess) -> str:
    return operator_token(server.db_url, "ops-health")


class Screen:
    """A registered device of the test's own, and the operator reading its health."""

    def __init__(self, server: ServerProcess, operator: str) -> None:
        self.server = server
        self.operator = operator
        self.device_id = f"scr-health-{next(_ids)}"
        self.token = provision(server.db_url, self.device_id)

    def play(self, seqs: list[int], journal_id: str = "j-1", ago_ms: int = 1000) -> None:
        """Records `seqs` of a journal, ended `ago_ms` ago, sent now."""
        end = now_ms() - ago_ms
        records = [
            make_record(device_id=self.device_id, journal_id=journal_id, seq=s, end_ts=end)
            for s in seqs
        ]
        acks = post_records(self.server, self.token, records, self.device_id)
        assert [a["result"] for a in acks] == ["accepted"] * len(seqs), acks

    def report_evicted(self, ranges: list[list[int]], journal_id: str = "j-1") -> None:
        """A status message saying these ranges were evicted."""
        status = {
            "type": "status",
            "device_id": self.device_id,
            "journal_id": journal_id,
            "sent_at": now_ms(),
            "queue_depth": 0,
            "evicted": sum(last - first + 1 for first, last in ranges),
            "evicted_ranges": ranges,
        }
        with client(self.server.url, self.token) as http:
            assert http.post("/v1/devices/status", json=status).status_code == 204

    def listed(self) -> dict[str, Any]:
        """This device's row of GET /v1/devices."""
        listed = every_device(self.server, self.operator)
        [mine] = [d for d in listed if d["device_id"] == self.device_id]
        return mine

    def detail(self) -> dict[str, Any]:
        """GET /v1/devices/{id}."""
        with client(self.server.url, self.operator) as http:
            response = http.get(f"/v1/devices/{self.device_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def listed_when(self, holds: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """This device's row once `holds` is true of it (polled until WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while not holds(mine := self.listed()):
            assert time.monotonic() < deadline, f"timed out; last seen {mine}"
            time.sleep(0.2)
        return mine


@pytest.fixture
def screen(server: ServerProcess, operator: str) -> Screen:
    return Screen(server, operator)


def test_gaps_past_the_offline_limit_are_lost_and_counted_as_lost_ranges(screen: Screen) -> None:
    screen.play([1, 2, 6, 8], ago_ms=NEARLY_STALE_MS)
    mine = screen.listed_when(lambda d: d["open_gaps"] == 0)
    assert (mine["lost"], mine["lost_ranges"], mine["open_gaps"]) == (4, 2, 0)
    assert "lost" in mine["problems"] and "gaps" not in mine["problems"]
    [journal] = screen.detail()["journals"]
    assert journal["lost_ranges"] == [[3, 5], [7, 7]] and journal["open_gaps"] == []
    assert (journal["lost"], journal["missing"]) == (4, 0)


def test_a_recent_gap_is_open_not_lost(screen: Screen) -> None:
    screen.play([1, 3])
    mine = screen.listed()
    assert (mine["lost"], mine["lost_ranges"], mine["open_gaps"], mine["missing"]) == (0, 0, 1, 1)
    assert screen.detail()["journals"][0]["open_gaps"] == [[2, 2]]


def test_each_new_journal_of_a_known_device_is_a_reset(screen: Screen) -> None:
    screen.play([1, 2], journal_id="j-first")
    assert screen.listed()["resets"] == 0
    screen.play([1], journal_id="j-second")
    mine = screen.listed()
    assert (mine["resets"], mine["current_journal"]) == (1, "j-second")
    screen.play([1], journal_id="j-third")
    detail = screen.detail()
    assert detail["resets"] == 2
    assert [j["journal_id"] for j in detail["journals"]] == ["j-first", "j-second", "j-third"]


def test_an_eviction_the_device_reported_is_counted_once_as_evicted_never_as_lost(
    screen: Screen,
) -> None:
    screen.play([1, 2, 6], ago_ms=NEARLY_STALE_MS)  # 3..5 soon lost
    screen.play([10])  # 7..9 open: seq 10 is recent
    before = screen.listed_when(lambda d: d["lost"] > 0)
    assert (before["lost"], before["open_gaps"], before["missing"]) == (3, 1, 3)
    screen.report_evicted([[3, 4], [7, 9]])
    after = screen.listed()
    assert (after["lost"], after["lost_ranges"], after["evicted_total"]) == (1, 1, 5)
    assert (after["open_gaps"], after["missing"]) == (0, 0)
    assert screen.detail()["journals"][0]["lost_ranges"] == [[5, 5]]
    # A status sent again after its answer was lost, its first range grown since:
    # the sequences it repeats are not counted twice.
    screen.report_evicted([[3, 5]])
    mine, detail = screen.listed(), screen.detail()
    assert (mine["lost"], mine["lost_ranges"], mine["evicted_total"]) == (0, 0, 6)
    assert "lost" not in mine["problems"]
    assert (detail["lost"], detail["evicted_total"]) == (0, 6)
    assert detail["journals"][0]["lost_ranges"] == []


RANGES = st.lists(
    st.tuples(st.integers(1, 60), st.integers(0, 8)).map(lambda r: (r[0], r[0] + r[1]))
)


@given(first=st.integers(1, 60), length=st.integers(0, 20), evicted=RANGES)
def test_a_gap_less_its_evictions_is_exactly_the_sequences_still_missing(
    first: int, length: int, evicted: list[tuple[int, int]]
) -> None:
    last = first + length
    covered = {s for low, high in evicted for s in range(low, high + 1)}
    pieces = outside(first, last, merged(evicted))
    left = [s for low, high in pieces for s in range(low, high + 1)]
    assert left == sorted(set(range(first, last + 1)) - covered), "in order, none twice"
    assert all(a[1] + 1 < b[0] for a, b in pairwise(pieces)), "maximal"


@given(evicted=RANGES, other=RANGES)
def test_evicted_sequences_are_counted_once_per_journal_however_often_reported(
    evicted: list[tuple[int, int]], other: list[tuple[int, int]]
) -> None:
    ranges = [("j-1", a, b) for a, b in evicted + evicted] + [("j-2", a, b) for a, b in other]
    distinct = {("j-1", s) for a, b in evicted for s in range(a, b + 1)}
    distinct |= {("j-2", s) for a, b in other for s in range(a, b + 1)}
    assert evicted_count(ranges) == len(distinct)


def test_a_journal_past_the_gap_cap_is_suspect_and_its_gaps_stay_capped(screen: Screen) -> None:
    """Every other sequence over many batches: the gaps merge at the cap, counts become bounds."""
    for n in range(5):
        screen.play([2 * (10 * n + i) + 1 for i in range(10)])  # 50 gaps uncapped
    mine = screen.listed()
    assert mine["open_gaps"] == MAX_GAPS and "suspect" in mine["problems"]
    assert mine["suspect"] is True
    [journal] = screen.detail()["journals"]
    assert journal["suspect"] is True and len(journal["open_gaps"]) == MAX_GAPS
    # An upper bound: the 49 missing sequences, and some that arrived, merged in.
    assert journal["missing"] > 49


def test_a_journal_under_the_gap_cap_is_not_suspect(screen: Screen) -> None:
    screen.play([1, 3, 5])
    mine = screen.listed()
    assert mine["suspect"] is False and "suspect" not in mine["problems"]
    assert screen.detail()["journals"][0]["suspect"] is False


def test_health_shows_the_key_and_panel_a_device_reports_and_names_their_problems(
    screen: Screen,
) -> None:
    """Protocol version 2's status fields reach device health: a key in alarm and a
    display seen off are problems the dashboard highlights."""
    status = {
        "type": "status",
        "device_id": screen.device_id,
        "sent_at": now_ms(),
        "key_id": "a9f14be0b3168b16",
        "key_state": "too_many_keys",
        "key_alarm": "key registration failed (HTTP 409)",
        "panel_state": "standby",
        "panel_source": "cec",
    }
    with client(screen.server.url, screen.token) as http:
        assert http.post("/v1/devices/status", json=status).status_code == 204
    mine = screen.listed()
    shown = {k: mine[k] for k in ("key_id", "key_state", "panel_state", "panel_source")}
    assert shown == {
        "key_id": "a9f14be0b3168b16",
        "key_state": "too_many_keys",
        "panel_state": "standby",
        "panel_source": "cec",
    }
    assert {"key_alarm", "panel_off"} <= set(mine["problems"])
    status.update(sent_at=now_ms(), key_state="acknowledged", key_alarm=None, panel_state="on")
    with client(screen.server.url, screen.token) as http:
        assert http.post("/v1/devices/status", json=status).status_code == 204
    assert not {"key_alarm", "panel_off"} & set(screen.listed()["problems"])
