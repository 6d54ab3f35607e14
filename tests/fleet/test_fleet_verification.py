"""A small fleet on the real clock, booked by its catalog, with the demo's screen-side breaks.

Real time because the device SDK waits for a play's screenshot moment in real
seconds: on a faster simulated clock the play is over before the moment comes,
and no screen would take one. Four screens for forty seconds, three of them
capturing (one showing another content's picture for its first item) and one
layering a banner on its first item, against a real `playproof serve`: the run
must reconcile clean with every valid play verified, failed with its reasons, or
waiting for a reason, and the breaks must fail for the reasons they were made for.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from playproof.fleet import commands, simulator
from playproof.fleet.accounting import WAITS
from playproof.fleet.plan import SECOND_MS, Faults, FleetOptions
from playproof.fleet.simulator import RunResult
from tests.support import ServerProcess


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunResult, Path]]:
    folder = tmp_path_factory.mktemp("verified-fleet")
    db = folder / "playproof.db"
    options = FleetOptions(
        devices=4,
        duration_ms=40 * SECOND_MS,
        devices_dir=folder / "fleet",
        faults=Faults.none(),
        play_length=(10 * SECOND_MS, 12 * SECOND_MS),
        drain_s=15.0,
        screenshots=3,
        breaks=True,
    )
    with ServerProcess(f"sqlite:///{db}") as server:
        view = commands.views(server.url, options, False, Console(file=io.StringIO()))
        yield simulator.run(server.url, f"sqlite:///{db}", options, view), db


def test_every_valid_play_is_verified_failed_or_waiting_for_a_reason(
    run: tuple[RunResult, Path],
) -> None:
    result, _ = run
    rec, checked = result.reconciliation, result.reconciliation.verification
    assert rec.ok, (rec.total, checked, rec.findings)
    assert checked.valid == rec.total.valid > 0, "every valid play held is accounted"
    waiting = sum(checked.pending.values())
    assert checked.valid == checked.verified + checked.failed + waiting
    assert set(checked.pending) <= set(WAITS) and checked.stuck == 0
    assert checked.verified > 0
    assert (rec.total.lost, rec.total.double, rec.total.queued) == (0, 0, 0)


def test_the_wrong_picture_fails_screenshot_mismatch_on_its_screen_for_its_content(
    run: tuple[RunResult, Path],
) -> None:
    result, db = run
    assert result.breaks.wrong is not None
    screen, content, _ = result.breaks.wrong
    with sqlite3.connect(db) as conn:
        shots = conn.execute(
            "SELECT device_id, content_id, verification_reasons FROM impressions "
            "WHERE screenshot_sha256 IS NOT NULL AND status = 'valid'"
        ).fetchall()
        uploaded = conn.execute("SELECT count(*) FROM screenshots").fetchone()[0]
    assert uploaded > 0 and len({s[0] for s in shots}) == 3, "three screens capture"
    mismatched = {(d, c) for d, c, reasons in shots if "screenshot_mismatch" in (reasons or "")}
    assert mismatched == {(screen, content)}
    assert result.reconciliation.verification.reasons["screenshot_mismatch"] > 0


def test_the_layered_banner_fails_overlap_on_its_one_zone_screen(
    run: tuple[RunResult, Path],
) -> None:
    result, db = run
    assert result.breaks.banner is not None
    screen, banner = result.breaks.banner
    with sqlite3.connect(db) as conn:
        overlapping = conn.execute(
            "SELECT DISTINCT device_id, content_id FROM impressions "
            "WHERE verification_reasons LIKE '%overlap%'"
        ).fetchall()
    assert overlapping == [(screen, banner)], "the banner, stored second, loses its place"


def test_the_statement_agrees_with_the_reconciliation_to_the_play(
    run: tuple[RunResult, Path],
) -> None:
    """Billing (issue 14) over the run's day: its plays, valid and partial are the
    reconciliation's, and billable + failed + pending is valid."""
    import asyncio
    import json

    from playproof.rules import DEFAULT_POLICY
    from playproof.server import admin
    from playproof.server.statements import billing_statement
    from tests.support import now_ms

    result, db = run
    day = now_ms() // 86_400_000 * 86_400_000
    period = {"from": _utc(day - 86_400_000), "to": _utc(day + 86_400_000), "tz": "UTC"}

    async def statement() -> dict[str, object]:
        async with admin.opened(f"sqlite:///{db}") as store:
            return dict(
                json.loads(await billing_statement(store, period, now_ms(), DEFAULT_POLICY))
            )

    doc = asyncio.run(statement())
    lines = doc["lines"]
    assert isinstance(lines, list) and lines
    total = result.reconciliation.total
    assert sum(line["plays"] for line in lines) == total.valid + total.partial
    assert sum(line["valid"] for line in lines) == total.valid
    assert sum(line["partial"] for line in lines) == total.partial
    for line in lines:
        assert line["billable_plays"] + line["failed"] + line["pending"] == line["valid"], line
    checked = result.reconciliation.verification
    assert sum(line["billable_plays"] for line in lines) == checked.verified
    assert doc["status"] == "provisional", "today is not over"


def _utc(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
