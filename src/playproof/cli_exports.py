"""`playproof export dv360|playout`: a buyer export written to a file or stdout.

The export is recorded before its first byte is written; should writing fail,
the message names its id, and `--id` writes the same bytes again. A file named
by `--out` appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import BinaryIO

from playproof.server import admin, exports
from playproof.server.ingest import wall_clock_ms
from playproof.stores import export_ledger as ledger
from playproof.stores.export_ledger import ExportInfo


async def write_export(
    db_url: str,
    buyer: str,
    query: Mapping[str, str],
    default_seller: str,
    out: Path | None,
    skipped: Path | None,
) -> tuple[ExportInfo, dict[str, int]]:
    """Make (or find by id) an export, write it and its plays listed apart; its counts."""
    async with admin.opened(db_url) as store:
        info, body = await exports.open_export(store, buyer, query, wall_clock_ms(), default_seller)
        try:
            await _write(body, out)
            if skipped is not None:
                await _write(exports.skipped_body(store, info.export_id, "csv"), skipped)
        except OSError as exc:
            raise ValueError(
                f"export {info.export_id} is recorded, but writing it failed ({exc}); "
                f"write it again with --id {info.export_id}"
            ) from None
        return info, await ledger.reason_counts(store, info.export_id)


async def _write(body: AsyncGenerator[bytes, None], path: Path | None) -> None:
    if path is None:
        await _copy(body, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    part = path.with_name(path.name + ".part")
    with part.open("wb") as sink:
        await _copy(body, sink)
        sink.flush()
        os.fsync(sink.fileno())
    part.replace(path)


async def _copy(body: AsyncGenerator[bytes, None], sink: BinaryIO) -> None:
    async for piece in body:
        sink.write(piece)


def describe(info: ExportInfo, reasons: Mapping[str, int]) -> str:
    """One line for the terminal: which export, how many plays, why others were left out."""
    text = (
        f"export {info.export_id} ({info.buyer}): {info.plays} plays, {info.skipped} listed apart"
    )
    if reasons:
        text += " (" + ", ".join(f"{reason} {n}" for reason, n in reasons.items()) + ")"
    return text
