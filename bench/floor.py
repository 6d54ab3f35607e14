"""The floor of bench/stream.py's runs (issue 17): what any service over this store and
this framework spends a frame at least, measured in the same run.

The echo reference's CPU a frame (measured by bench/stream.py), plus bench/batches.py's
store phase run on the service's core with 1-record batches from as many devices, as many
a commit as the service grouped them: the store's own draft and commit, no HTTP, decoding
or rules. On SQLite also its raw phase: the same rows written by the store's statements
alone, the floor with none of playproof's Python.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def frames_per_commit(commits: dict[str, float]) -> int:
    """The service's frames per group commit (at least 1), from its histogram."""
    count = commits.get("playproof_commit_batches_count", 0.0)
    return max(1, round(commits.get("playproof_commit_batches_sum", 0.0) / count)) if count else 1


def store_floor(
    args: argparse.Namespace, devices: int, group: int, core: int | None
) -> dict[str, dict[str, float]] | None:
    """The store's own cost of the run's frames: bench/batches.py's store phase (and, on
    SQLite, its raw phase: the same rows by the store's statements alone), pinned to
    `core` (the service's), with 1-record batches from as many devices, `group` a
    commit (as the service grouped them); decoding and judging timed off the clock."""
    order = "store" if args.db else "store,raw"
    cmd = [sys.executable, str(Path(__file__).with_name("batches.py")), "--order", order]
    cmd += ["--records", "1", "--clients", str(devices), "--group", str(group)]
    cmd += ["--duration", f"{min(args.duration, 8.0):g}", "--json"]
    if args.db:
        cmd += ["--db", args.db]
    cmd = (["taskset", "-c", str(core)] if core is not None else []) + cmd
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    found = [ln for ln in done.stdout.splitlines() if ln.startswith("json ")]
    if done.returncode or not found:
        print(f"  ERROR store floor: {done.stdout[-400:]} {done.stderr[-400:]}")
        return None
    figures: dict[str, dict[str, float]] = json.loads(found[-1].removeprefix("json "))
    return figures


def print_floor(phases: dict[str, dict[str, float]], framework_us: float, what: str) -> None:
    """What any service over this store spends a frame at least: the framework's path,
    then drafting and committing through the store; below it, the framework's path and
    SQLite's own work for the same rows (decoding and judging, timed off the clock on
    cold records, are printed beside it, not counted)."""
    store = phases["store"]
    print(
        f"  floor: {what} {framework_us:.1f} + the store's own draft and commit "
        f"{store['cpu_us']:.1f} (drafting {store['draft_us']:.1f}; {store['rate']:,.0f} "
        f"frames/s alone on the core) = {framework_us + store['cpu_us']:.1f} µs/frame; "
        f"decoding and judging, not counted: {store['judge_us']:.1f}"
    )
    raw = phases.get("raw")
    if raw is not None:
        print(
            f"  floor without any of playproof's Python: {what} {framework_us:.1f} + SQLite "
            f"writing the same rows by the store's statements {raw['cpu_us']:.1f} "
            f"= {framework_us + raw['cpu_us']:.1f} µs/frame"
        )


def floor_exact(phases: dict[str, dict[str, float]]) -> bool:
    """Every floor phase checked exactly-once."""
    return all(bool(p["exact"]) for p in phases.values())


def check_floor(
    args: argparse.Namespace,
    devices: int,
    commits: dict[str, float],
    core: int | None,
    framework: tuple[str, float],
    allowed: tuple[str, float],
) -> bool:
    """A run's floor, printed: `framework` (what, µs a frame) then the store's own cost,
    beside what the target allows (`allowed`: by what, µs a frame)."""
    store = store_floor(args, devices, frames_per_commit(commits), core)
    if store is None:
        return False
    print_floor(store, framework[1], framework[0])
    print(f"  {allowed[0]} allows {allowed[1]:.1f} µs/frame")
    return floor_exact(store)
