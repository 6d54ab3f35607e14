"""`playproof simulate` and `playproof reconcile`, end to end, as real commands.

One fleet run with every fault kind enabled, at 600x on a service with the same
simulated clock: six hours of simulated time, offline windows past the 4 h
limit, clocks skewed by seconds, minutes and hours and stepped mid-run, skips,
interruptions, errors, content loops, crashes with restart and journals small
enough to evict. It must end with nothing lost and nothing counted twice; then
the oracle is shown to fail when an impression is deleted or one is invented.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import Tally
from tests.support import ServerProcess

EVERY_FAULT = [
    "--devices", "16", "--duration", "6h", "--seed", "7", "--play-length", "60s..120s",
    "--offline", "0.4", "--long-offline", "0.4", "--skew", "0.4", "--steps", "0.3",
    "--skip", "0.2", "--interrupt", "0.1", "--error", "0.05", "--loops", "0.2",
    "--crash", "0.4", "--crashes", "2", "--capacity", "200", "--drain", "30",
]  # fmt: skip
# Time runs 600x: a fast device may send more than the default frames per second.
SERVICE = ["--sim-clock", "600", "--limit", "device_rate=2000", "--limit", "device_burst=4000"]


def playproof(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real command."""
    cmd = [sys.executable, "-m", "playproof", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@dataclass
class Run:
    done: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    db: Path
    fleet: Path
    folder: Path
    server: ServerProcess


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("simulate")
    db = folder / "playproof.db"
    fleet, report = folder / "fleet", folder / "report.json"
    with ServerProcess(f"sqlite:///{db}", *SERVICE) as server:
        done = playproof(
            "simulate", "--server", server.url, "--db", f"sqlite:///{db}",
            "--devices-dir", str(fleet), "--json", str(report), "--no-live", *EVERY_FAULT,
        )  # fmt: skip
        assert report.exists(), done.stdout + done.stderr
        yield Run(done, json.loads(report.read_text()), db, fleet, folder, server)


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_every_fault_kind_ends_with_nothing_lost_and_nothing_counted_twice(
    run: Run, tally: Tally
) -> None:
    total = run.report["total"]
    progress = run.report["run"]["progress"]
    tally.faults = progress["crashes"] + progress["cuts"] + progress["steps"]
    tally.add_reconciliation(run.report)
    assert run.done.returncode == 0, run.done.stdout + run.done.stderr
    assert run.report["ok"] and "CLEAN" in run.done.stdout
    assert (total["lost"], total["double"], run.report["errors"]) == (0, 0, [])
    assert total["recorded"] > 1000
    parts = total["accepted"] + sum(total["rejected"].values())
    assert parts + total["queued"] + total["open"] + total["evicted"] == total["recorded"]
    assert total["mismatched"] == 0
    checked = run.report["verification"]
    assert checked["ok"] and checked["valid"] == total["valid"]
    assert checked["valid"] == checked["verified"] + checked["failed"] + checked["pending"]


def test_every_fault_kind_did_happen(run: Run) -> None:
    total, progress = run.report["total"], run.report["run"]["progress"]
    assert total["rejected"].get("stale", 0) > 0, "records held past the 4 h limit"
    assert total["evicted"] > 0, "journals full while offline"
    assert min(progress["crashes"], progress["cuts"], progress["steps"]) > 0
    reasons = {r for (r,) in query(run.db, "SELECT DISTINCT end_reason FROM impressions")}
    assert {"completed", "skipped", "interrupted", "error", "device_restart"} <= reasons
    log = (run.fleet / "fleet.log").read_text()
    assert "wall clock stepped" in log and "delivery interrupted" in log
    unsynced = query(run.db, "SELECT count(*) FROM impressions WHERE clock_synced = 0")[0][0]
    assert unsynced > 0, "skewed screens have no time server"
    loops = query(
        run.db,
        "SELECT count(*) FROM impressions a JOIN impressions b ON a.device_id = b.device_id "
        "AND a.journal_id = b.journal_id AND b.seq = a.seq + 1 AND b.start_ts = a.end_ts "
        "AND a.content_id = b.content_id",
    )[0][0]
    assert loops > 0, "content loops: each pass starts where the last one ended"


def test_reconcile_on_demand_agrees_and_exits_0(run: Run) -> None:
    done = playproof("reconcile", "--db", f"sqlite:///{run.db}", "--devices-dir", str(run.fleet))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CLEAN" in done.stdout


def copy_of(run: Run, name: str) -> Path:
    """A consistent copy of the service's database, to damage."""
    target = run.folder / name
    source = sqlite3.connect(run.db, timeout=10)
    copy = sqlite3.connect(target)
    source.backup(copy)
    copy.close()
    source.close()
    return target


def test_reconcile_fails_when_a_stored_impression_is_deleted(run: Run) -> None:
    damaged = copy_of(run, "deleted.db")
    conn = sqlite3.connect(damaged)
    # The first impression received: its device has long had its ack.
    conn.execute(
        "DELETE FROM impressions WHERE (device_id, journal_id, seq) = "
        "(SELECT device_id, journal_id, seq FROM impressions ORDER BY received_at LIMIT 1)"
    )
    conn.commit()
    conn.close()
    done = playproof("reconcile", "--db", f"sqlite:///{damaged}", "--devices-dir", str(run.fleet))
    assert done.returncode == 1
    assert "FAILED: 1 lost" in done.stdout


def test_reconcile_fails_when_an_impression_appears_that_no_device_recorded(run: Run) -> None:
    damaged = copy_of(run, "phantom.db")
    conn = sqlite3.connect(damaged)
    conn.execute(
        "INSERT INTO impressions (device_id, journal_id, seq, campaign_id, ad_group_id, "
        "content_id, store_id, supplier_id, start_ts, end_ts, duration_ms, expected_ms, "
        "end_reason, clock_offset_ms, clock_synced, screenshot_sha256, screenshot_at_ms, "
        "checksum, status, quality, flags, verification, received_at, skew_ms) "
        "SELECT device_id, journal_id, seq + 100000, campaign_id, "
        "ad_group_id, content_id, store_id, supplier_id, start_ts + 1, end_ts + 1, duration_ms, "
        "expected_ms, end_reason, clock_offset_ms, clock_synced, screenshot_sha256, "
        "screenshot_at_ms, checksum, status, quality, flags, verification, received_at, skew_ms "
        "FROM impressions LIMIT 1"
    )
    conn.commit()
    conn.close()
    json_path = run.folder / "phantom.json"
    done = playproof(
        "reconcile", "--db", f"sqlite:///{damaged}", "--devices-dir", str(run.fleet),
        "--json", str(json_path),
    )  # fmt: skip
    assert done.returncode == 1
    assert "1 counted twice" in done.stdout
    assert [f["kind"] for f in json.loads(json_path.read_text())["findings"]] == ["phantom"]


def test_simulate_refuses_a_speed_the_service_does_not_run(run: Run, tmp_path: Path) -> None:
    done = playproof(
        "simulate", "--server", run.server.url, "--db", f"sqlite:///{run.db}", "--speed", "10",
        "--devices", "1", "--devices-dir", str(tmp_path / "fleet"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "playproof serve --sim-clock 10" in done.stderr


def test_a_screen_that_cannot_start_fails_the_run_whatever_the_reconciliation_says(
    run: Run, tmp_path: Path
) -> None:
    """A screen stopped by an error has recorded nothing: the reconciliation alone would
    call such a run clean, so the run itself must fail and say why."""
    screen = tmp_path / "fleet" / "sim-0001"
    screen.mkdir(parents=True)
    key = screen / "device.key"
    key.write_bytes(bytes(32))
    key.chmod(0o644)  # readable by others: the device refuses to sign with it
    fleet = screen.parent
    done = playproof(
        "simulate", "--server", run.server.url, "--db", f"sqlite:///{run.db}",
        "--devices", "1", "--duration", "2m", "--devices-dir", str(fleet), "--no-live",
        "--no-faults", "--no-catalog", "--drain", "5",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 screens stopped on an error" in done.stdout, done.stdout + done.stderr
