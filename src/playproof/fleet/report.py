"""The reconciliation report for people (rich tables) and machines (JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from playproof.fleet.accounting import Verification
from playproof.fleet.reconcile import Reconciliation, Tally

SHOW_DEVICES: Final = 20
SHOW_FINDINGS: Final = 20
COLUMNS: Final = (
    "recorded",
    "valid",
    "partial",
    "dup absorbed",
    "rejected",
    "queued",
    "open",
    "evicted",
    "lost",
    "twice",
)
WIDE: Final = 140


def console() -> Console:
    """A console for reports: as wide as the terminal, or WIDE when writing to a pipe."""
    found = Console()
    if found.is_terminal or "COLUMNS" in os.environ:
        return found
    return Console(width=WIDE)


def _cells(tally: Tally) -> list[str]:
    rejected = sum(tally.rejected.values())
    values = (
        tally.recorded,
        tally.valid,
        tally.partial,
        tally.duplicates,
        rejected,
        tally.queued,
        tally.open,
        tally.evicted,
        tally.lost,
        tally.double,
    )
    return [f"{v:,}" for v in values]


def _worst_first(result: Reconciliation, show_all: bool) -> list[tuple[str, Tally]]:
    rows = sorted(
        result.devices.items(),
        key=lambda kv: (-(kv[1].lost + kv[1].double), -kv[1].evicted, -kv[1].queued, kv[0]),
    )
    return rows if show_all else rows[:SHOW_DEVICES]


def render(result: Reconciliation, show_all: bool = False) -> RenderableType:
    """The report: devices (the worst first), the total, reasons, findings and the verdict."""
    table = Table(title="Reconciliation: device ledgers against the service", show_footer=True)
    table.add_column("device", footer="total", no_wrap=True)
    for name, value in zip(COLUMNS, _cells(result.total), strict=True):
        table.add_column(name, footer=value, justify="right")
    for device_id, tally in _worst_first(result, show_all):
        table.add_row(device_id, *_cells(tally))
    parts: list[RenderableType] = [table]
    hidden = len(result.devices) - len(_worst_first(result, show_all))
    if hidden > 0:
        parts.append(Text(f"  ... and {hidden:,} more devices (--all shows every one)", "dim"))
    parts.append(_reasons(result.total))
    parts.append(verification_line(result.verification))
    parts.extend(_findings(result))
    parts.append(verdict(result))
    return Group(*parts)


def _reasons(total: Tally) -> RenderableType:
    if not total.rejected:
        return Text("  rejected by reason: none")
    shown = ", ".join(f"{reason} {n:,}" for reason, n in sorted(total.rejected.items()))
    return Text(f"  rejected by reason: {shown}")


def verification_line(tally: Verification) -> Text:
    """The valid plays by verification status, failures by reason, the pending by cause."""
    pending = sum(tally.pending.values())
    line = (
        f"  verification of {tally.valid:,} valid plays: {tally.verified:,} verified, "
        f"{tally.failed:,} failed{_counts(tally.reasons)}, {pending:,} pending"
        f"{_counts(tally.pending)}"
    )
    if tally.unaccounted:
        line += f", {tally.unaccounted:,} with no verification status"
    if tally.partial_judged:
        line += f"; {tally.partial_judged:,} partial plays judged"
    return Text(line, "" if tally.ok else "red")


def _counts(counts: dict[str, int]) -> str:
    shown = ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items()) if n)
    return f" ({shown})" if shown else ""


def _findings(result: Reconciliation) -> list[RenderableType]:
    out: list[RenderableType] = []
    if result.total.mismatched:
        out.append(Text(f"  device/service mismatches: {result.total.mismatched:,}", "yellow"))
    if result.total.outside:
        out.append(Text(f"  impressions before the ledgers' window: {result.total.outside:,}"))
    for error in result.errors[:SHOW_FINDINGS]:
        out.append(Text(f"  unreadable: {error}", "red"))
    for f in result.findings[:SHOW_FINDINGS]:
        where = f"{f.journal_id}#{f.seq}" if f.journal_id else ""
        out.append(Text(f"  {f.kind}: {f.device_id} {where} {f.detail}", "red"))
    return out


def verdict(result: Reconciliation) -> Text:
    """One line: clean, or what failed."""
    total = result.total
    speed = f"{result.rows:,} rows in {result.seconds:.2f} s ({result.rows_per_s:,.0f} rows/s)"
    if result.ok:
        evicted = f", {total.evicted:,} evicted (reported by the devices)" if total.evicted else ""
        return Text(
            f"CLEAN: every play accounted for, none lost, none counted twice, every valid "
            f"play verified, failed or waiting for a reason{evicted}; {speed}",
            "bold green",
        )
    problems = [f"{total.lost:,} lost", f"{total.double:,} counted twice"]
    if result.errors:
        problems.append(f"{len(result.errors)} journal(s) unreadable")
    checked = result.verification
    if checked.stuck or checked.unaccounted:
        problems.append(
            f"{checked.stuck + checked.unaccounted:,} valid plays stuck in verification"
        )
    if checked.partial_judged:
        problems.append(f"{checked.partial_judged:,} partial plays judged")
    return Text(f"FAILED: {', '.join(problems)}; {speed}", "bold red")


def show(result: Reconciliation, console: Console, show_all: bool = False) -> None:
    """Print the report."""
    console.print(render(result, show_all))


def write_json(result: Reconciliation, path: Path, extra: dict[str, object] | None = None) -> None:
    """Write the report as JSON (with anything the caller adds)."""
    path.write_text(json.dumps({**result.as_dict(), **(extra or {})}, indent=2) + "\n")
