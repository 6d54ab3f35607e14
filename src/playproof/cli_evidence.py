"""`playproof export evidence` and `playproof verify-evidence`: evidence a buyer checks alone.

`export evidence` writes the NDJSON the service serves at `GET /v1/exports/evidence`
(server/evidence.py), from the database. `verify-evidence` reads such a file and a
kept key log (`GET /v1/keys`) and checks them with no database and no service
(evidence.py); it exits 1 when the log's chain is broken or any record fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from rich.console import Console
from rich.table import Table

from playproof.cli_common import DbOption, err, fail, run
from playproof.errors import PlayproofError
from playproof.stores import DEFAULT_URL

if TYPE_CHECKING:
    from playproof.evidence import Report
    from playproof.keylog import KeyLog


def register(app: typer.Typer, export: typer.Typer) -> None:
    """Add the commands: `verify-evidence` on the app, `evidence` on the export group."""
    app.command("verify-evidence")(verify_evidence)
    export.command("evidence")(export_evidence)


def export_evidence(
    from_: Annotated[
        str, typer.Option("--from", help="Plays that started from: RFC 3339, or a date (UTC).")
    ],
    to: Annotated[str, typer.Option("--to", help="Up to (excluded), as --from.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write here (default: stdout).")] = None,
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Every impression that started in [--from, --to) as its device sealed it (NDJSON),
    with its received_at and verification: what `verify-evidence` checks."""
    try:
        count = run(lambda: _write(db_url, from_, to, out))
    except OSError as exc:
        raise fail(f"cannot write the export: {exc}") from None
    err.print(f"{count} records", highlight=False)


async def _write(db_url: str, from_: str, to: str, out: Path | None) -> int:
    from playproof.server import admin, evidence

    start, end = evidence.window({"from": from_, "to": to})
    async with admin.opened(db_url) as store:
        body = evidence.body(store, start, end)
        if out is None:
            count = await _copy(body, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return count
        # Whole or not at all: written beside the file, then renamed over it.
        part = out.with_name(out.name + ".part")
        with part.open("wb") as sink:
            count = await _copy(body, sink)
            sink.flush()
            os.fsync(sink.fileno())
        part.replace(out)
        return count


async def _copy(body: AsyncIterator[bytes], sink: BinaryIO) -> int:
    lines = 0
    async for chunk in body:
        lines += chunk.count(b"\n")
        sink.write(chunk)
    return lines


def verify_evidence(
    file: Annotated[Path, typer.Argument(help="An evidence export (NDJSON).")],
    keys: Annotated[
        Path, typer.Option("--keys", help="The key log as GET /v1/keys serves it (JSON).")
    ],
) -> None:
    """Check an evidence export offline: the key log's chain, then every record's checksum and
    signature against the keys the log registered for its device when it was received.

    Exit status 1 when the chain is broken or any record is bad or names an unknown key.
    """
    from playproof import evidence
    from playproof.keylog import parse_document

    try:
        log = parse_document(keys.read_bytes())
    except OSError as exc:
        raise fail(f"cannot read the key log {keys}: {exc.strerror}") from None
    except PlayproofError as exc:
        raise fail(f"{keys}: {exc}") from None
    try:
        with file.open("rb") as lines:  # read a line at a time: any size in bounded memory
            report = evidence.verify(lines, log)
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None
    _print(report)
    _print_keys(log, set(report.counts))
    if not report.ok:
        raise typer.Exit(1)


def _print_keys(log: KeyLog, devices: set[str]) -> None:
    """When and by whom each key of the export's devices was registered or revoked."""
    from datetime import UTC, datetime

    table = Table(title="keys of these devices, from the key log")
    for name in ("device_id", "key_id", "event", "at (UTC)", "by"):
        table.add_column(name)
    for entry in log.entries:
        if entry.device_id in devices and entry.key_id is not None:
            at = datetime.fromtimestamp(entry.at / 1000, UTC).isoformat(timespec="milliseconds")
            table.add_row(entry.device_id, entry.key_id, entry.event, at, entry.actor)
    Console().print(table)


def _print(report: Report) -> None:
    from playproof.evidence import OUTCOMES

    out = Console()
    table = Table(title="evidence by device")
    table.add_column("device_id")
    for outcome in OUTCOMES:
        table.add_column(outcome, justify="right")
    totals = dict.fromkeys(OUTCOMES, 0)
    for device in sorted(report.counts):
        counts = report.counts[device]
        table.add_row(device, *(str(counts[o]) for o in OUTCOMES))
        for o in OUTCOMES:
            totals[o] += counts[o]
    table.add_row("total", *(str(totals[o]) for o in OUTCOMES), style="bold")
    out.print(table)
    if report.chain:
        err.print(f"[bold red]key log chain broken:[/] {report.chain}", highlight=False)
    else:
        err.print("key log chain: intact", highlight=False)
    for number, failed in report.failures:
        err.print(f"line {number} ({failed.device_id}): {failed.outcome}: {failed.detail}")
    err.print("[bold green]ok[/]" if report.ok else "[bold red]FAILED[/]", highlight=False)
