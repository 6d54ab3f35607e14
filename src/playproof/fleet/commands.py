"""What the `simulate`, `reconcile` and `demo` commands do, once the CLI has parsed them."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from playproof.fleet import report, simulator
from playproof.fleet.live import Header, LineView, LiveView, View
from playproof.fleet.plan import FleetOptions, show_duration
from playproof.fleet.simclock import SimClock
from playproof.fleet.simulator import RunResult


def views(server_url: str, options: FleetOptions, live: bool | None, console: Console) -> Any:
    """A factory of the view to show: rich Live on a terminal, plain lines elsewhere."""
    use_live = console.is_terminal if live is None else live

    def make(clock: SimClock, run_start_ms: int) -> View:
        """The view for a run that starts at `run_start_ms` on `clock`."""
        header = Header(clock.speed, run_start_ms, options.duration_ms, server_url)
        return LiveView(header, console) if use_live else LineView(header, console)

    return make


def summary(result: RunResult) -> dict[str, Any]:
    """The run itself, beside the reconciliation, for the JSON report."""
    progress = asdict(result.progress)
    for samples in ("lag_ms", "round_trip_ms"):
        progress.pop(samples)
    return {
        "run": {
            "clock": result.clock.info(),
            "run_start_ms": result.run_start_ms,
            "interrupted": result.interrupted,
            "real_seconds": round(result.real_seconds, 1),
            "progress": progress,
        }
    }


def simulate(
    server_url: str,
    db_url: str,
    options: FleetOptions,
    *,
    speed: float | None = None,
    live: bool | None = None,
    json_path: Path | None = None,
    show_all: bool = False,
) -> int:
    """Run the fleet, print the reconciliation; the exit code (1: lost or counted twice)."""
    console = report.console()
    result = simulator.run(
        server_url, db_url, options, views(server_url, options, live, console), speed
    )
    finish(result, console, json_path, show_all)
    return 0 if result.reconciliation.ok and not result.progress.failed else 1


def finish(result: RunResult, console: Console, json_path: Path | None, show_all: bool) -> None:
    """Print what the run did and the reconciliation; write the JSON report if asked."""
    progress = result.progress
    stopped = "stopped by Ctrl-C" if result.interrupted else "ran to its end"
    span = show_duration(max(0, progress.sim_now_ms - result.run_start_ms))
    console.print(
        f"\nfleet {stopped}: {progress.screens:,} screens, {progress.recorded:,} plays, "
        f"{progress.crashes:,} crashes, {span} simulated in {result.real_seconds:.0f} s real; "
        f"device logs in {result.log_file}\n",
        highlight=False,
    )
    if progress.failed:
        console.print(
            f"{progress.failed:,} screens stopped on an error (see {result.log_file}): "
            "the run fails whatever the reconciliation says",
            highlight=False,
        )
    report.show(result.reconciliation, console, show_all)
    if json_path is not None:
        report.write_json(result.reconciliation, json_path, summary(result))


def reconcile(db_url: str, devices_dir: Path, json_path: Path | None, show_all: bool) -> int:
    """Reconcile stopped devices with the database; the exit code (1: lost or counted twice)."""
    if not devices_dir.is_dir():
        print(f"error: no devices folder at {devices_dir}", file=sys.stderr)
        return 1
    result = asyncio.run(simulator.reconcile(db_url, devices_dir))
    report.show(result, report.console(), show_all)
    if json_path is not None:
        report.write_json(result, json_path)
    return 0 if result.ok else 1
