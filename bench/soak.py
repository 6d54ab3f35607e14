"""Soak the fault suite: run its scenarios with many rounds of faults, print the reliability table.

    .venv/bin/python bench/soak.py                                  # every scenario, 10 rounds
    .venv/bin/python bench/soak.py --rounds 2 --scenarios "service_kill or player_kill" --markdown

It runs `pytest` once on the fault suite and the scenarios beside the code they break
(SCENARIOS; `-k PATTERN` with `--scenarios`), keeping only the scenarios that take the
`tally` fixture (this file is also that pytest plugin, `-p soak`),
with `PLAYPROOF_FAULT_ROUNDS=N` (each scenario injects N times its usual faults, in one
longer run), `PLAYPROOF_RELIABILITY_OUT` (a temporary JSON-lines file each scenario's tally
is appended to) and `CI=true` (a missing service fails rather than skips). pytest's
per-test timeout grows with the rounds. Then it adds up the tallies per scenario: runs,
faults injected, records involved, lost, double-counted, and the command that reproduces
it, as a rich table (and as Markdown with `--markdown`, for RELIABILITY.md).

Exit status 1 if pytest failed (a scenario failed, or none ran) or anything was lost or
counted twice. Not part of `make test`: a soak takes as long as the rounds ask.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# The fault suite, and the scenarios that live beside what they break.
SCENARIOS = (
    "tests/faults",
    "tests/stores/test_postgres_outage.py",
    "tests/pipeline/test_cluster.py",
    "tests/fleet/test_simulate.py",
)
TIMEOUT_S = 300  # pytest's per-test timeout at one round (pyproject.toml)
HEADERS = (
    "scenario",
    "runs",
    "faults injected",
    "records involved",
    "lost",
    "double-counted",
    "reproduce",
)
console = Console(width=240)


# --- the pytest plugin (loaded in the pytest run with -p soak) ----------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the scenarios that report through the `tally` fixture."""
    keep = [i for i in items if "tally" in getattr(i, "fixturenames", ())]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


# --- running ------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario's tallies, added up."""

    scenario: str
    runs: int = 0
    faults: int = 0
    records: int = 0
    lost: int = 0
    doubled: int = 0


def run_pytest(rounds: int, pattern: str | None, out: Path) -> int:
    """Run the fault scenarios with `rounds` rounds, tallies to `out`; pytest's exit code."""
    cmd = [sys.executable, "-m", "pytest", *SCENARIOS, "-p", "soak", "-p", "no:cacheprovider"]
    cmd += ["-q", "-rfE", f"--timeout={TIMEOUT_S * rounds}"]
    if pattern:
        cmd += ["-k", pattern]
    path = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "CI": "true",
        "PLAYPROOF_FAULT_ROUNDS": str(rounds),
        "PLAYPROOF_RELIABILITY_OUT": str(out),
        "PYTHONPATH": path,
    }
    console.print(f"$ {shlex.join(cmd)}", highlight=False)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def aggregate(out: Path) -> list[Row]:
    """The tallies the scenarios wrote, added up per scenario (in the order they ran).

    A parametrized scenario's cases are added up under its name.
    """
    rows: dict[str, Row] = {}
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    for line in filter(None, lines):
        tally = json.loads(line)
        # The cases of a parametrized scenario make one row: its runs are the cases.
        scenario = tally["scenario"].split("[", 1)[0]
        row = rows.setdefault(scenario, Row(scenario))
        row.runs += 1
        row.faults += int(tally["faults"])
        row.records += int(tally["records"])
        row.lost += int(tally["lost"])
        row.doubled += int(tally["doubled"])
    return list(rows.values())


def reproduce(scenario: str, rounds: int) -> str:
    """The command that runs this scenario again, as the soak did."""
    env = f"PLAYPROOF_FAULT_ROUNDS={rounds} " if rounds > 1 else ""
    quoted = "'" + scenario.replace("'", "'\\''") + "'"
    return f"{env}.venv/bin/pytest {quoted}"


# --- showing ------------------------------------------------------------------------


def columns(row: Row, rounds: int) -> list[str]:
    """A row's cells, as text."""
    counts = (row.runs, row.faults, row.records, row.lost, row.doubled)
    name = row.scenario.removeprefix("tests/")
    return [name, *(f"{n:,}" for n in counts), reproduce(row.scenario, rounds)]


def print_table(rows: list[Row], rounds: int) -> None:
    """The reliability table, with totals in the footer."""
    table = Table(title=f"reliability: fault scenarios, {rounds} round(s)", show_footer=True)
    totals = (sum(getattr(r, n) for r in rows) for n in ("runs", "faults", "records"))
    bad = (sum(r.lost for r in rows), sum(r.doubled for r in rows))
    footers = ["total", *(f"{n:,}" for n in totals), *(f"{n:,}" for n in bad), ""]
    for i, (header, footer) in enumerate(zip(HEADERS, footers, strict=True)):
        if 0 < i < 6:
            table.add_column(header, footer=footer, justify="right")
        else:
            table.add_column(header, footer=footer, overflow="fold")
    for row in rows:
        style = "red" if row.lost or row.doubled else None
        table.add_row(*(Text(cell) for cell in columns(row, rounds)), style=style)  # no markup
    console.print(table)


def markdown(rows: list[Row], rounds: int) -> str:
    """The reliability table in Markdown."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|---|" + "---:|" * 5 + "---|"]
    for row in rows:
        cells = columns(row, rounds)
        cells[0], cells[-1] = f"`{cells[0]}`", f"`{cells[-1]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="fault rounds per scenario (default 10)")
    p.add_argument("--scenarios", metavar="PATTERN", help="a pytest -k expression (default: all)")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"expected --rounds of at least 1, got {args.rounds}")
    return args


def main(args: argparse.Namespace) -> int:
    """Soak; exit status 1 if pytest failed or anything was lost or counted twice."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="playproof-soak-") as tmp:
        out = Path(tmp) / "reliability.jsonl"
        code = run_pytest(args.rounds, args.scenarios, out)
        rows = aggregate(out)
    seconds = time.monotonic() - started
    console.print(
        f"\n{len(rows)} scenario(s), {args.rounds} round(s), pytest exit code {code}, "
        f"{seconds:.0f} s; {os.cpu_count()} cores",
        highlight=False,
    )
    print_table(rows, args.rounds)
    if args.markdown:
        print(markdown(rows, args.rounds))
    clean = code == 0 and bool(rows) and not any(r.lost or r.doubled for r in rows)
    if not clean:
        console.print("[bold red]FAILED[/]: see pytest's output above and the table")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(parse()))
