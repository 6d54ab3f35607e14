"""Buyer exports for the routes and the CLI: parameters in, a streamed file out.

`GET /v1/exports/dv360` and `GET /v1/exports/playout` (and `playproof export`)
make a new export, recorded in the ledger before the first byte is sent, or
produce a past one again by `export_id`. Either way the body streams from the
ledger, in export order; the export's id and counts come as response headers,
so that a buyer's script knows, before reading the body, which export it holds
and where to find the plays listed apart (`GET /v1/exports/{id}/skipped`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, Final

from starlette.datastructures import QueryParams

from playproof.errors import NotFound, ProtocolError
from playproof.exports import BUYERS, DV360, DV360_BATCH, PLAYOUT, dv360_body
from playproof.protocol import MAX_INT
from playproof.server.formats import CSV, JSON, NDJSON, csv_text, encode, rfc3339
from playproof.server.params import Params, time_range
from playproof.stores import export_ledger as ledger
from playproof.stores.base import Store
from playproof.stores.export_ledger import ExportInfo, ExportRequest

Query = QueryParams | Mapping[str, str]

EXPORT_PARAMS: Final = ("since", "from", "to", "export_id", "seller_id")
MEDIA: Final = {DV360: NDJSON, PLAYOUT: CSV}
EXTENSION: Final = {DV360: "ndjson", PLAYOUT: "csv"}
SELLER_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
SKIPPED_FIELDS: Final = ("device_id", "journal_id", "seq", "start_ts", "end_ts", "reasons", "final")
SKIPPED_MEDIA: Final = {"json": JSON, "csv": CSV, "ndjson": NDJSON}


def export_id_value(name: str, value: str) -> int:
    """An export id given as text: an integer from 1."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_INT:
        raise ProtocolError(
            f"expected `{name}` as an export id (an integer from 1), got {value[:40]!r}"
        )
    return int(value)


def export_request(
    buyer: str, query: Query, now: int, default_seller: str = ""
) -> ExportRequest | int:
    """What a request asks: a new export, or (an int) a past one by id."""
    if buyer not in BUYERS:
        raise NotFound(f"expected a buyer among {', '.join(BUYERS)}, got {buyer[:40]!r}")
    params = Params(query, EXPORT_PARAMS)
    given = [name for name in EXPORT_PARAMS if params.get(name) is not None]
    raw_id = params.get("export_id")
    if raw_id is not None:
        if given != ["export_id"]:
            raise ProtocolError("expected `export_id` alone: a past export is produced as it was")
        return export_id_value("export_id", raw_id)
    since = params.get("since")
    if since is not None and since != "last":
        raise ProtocolError(f"expected `since` as last, got {since[:40]!r}")
    start, end = time_range(params)
    if (since is None) == (start is None and end is None):
        raise ProtocolError(
            "expected since=last (every verified play not yet exported to this buyer), "
            "or from/to (those among them that started in the range), or export_id"
        )
    seller = _seller(buyer, params.get("seller_id"), default_seller)
    return ExportRequest(buyer, now, start, end, since is not None, seller)


def _seller(buyer: str, given: str | None, default: str) -> str | None:
    if buyer != DV360:
        if given is not None:
            raise ProtocolError("expected no `seller_id`: it names a DV360 seller")
        return None
    seller = given if given is not None else default
    if not SELLER_ID.fullmatch(seller):
        raise ProtocolError(
            "expected `seller_id` (or the dv360_seller_id setting): the DV360 seller id, "
            f"1 to 64 of A-Z a-z 0-9 . _ -, got {seller[:40]!r}"
        )
    return seller


async def find_export(store: Store, export_id: int, buyer: str | None = None) -> ExportInfo:
    """A recorded export (of that buyer, when given); NotFound otherwise."""
    info = await ledger.export_info(store, export_id)
    if info is None:
        raise NotFound(f"no export {export_id} is recorded")
    if buyer is not None and info.buyer != buyer:
        raise NotFound(f"export {export_id} is a {info.buyer} export, not a {buyer} one")
    return info


async def open_export(
    store: Store, buyer: str, query: Query, now: int, default_seller: str = ""
) -> tuple[ExportInfo, AsyncGenerator[bytes, None]]:
    """The export a request asks for (made and recorded now, or found by id) and its body."""
    wanted = export_request(buyer, query, now, default_seller)
    if isinstance(wanted, int):
        info = await find_export(store, wanted, buyer)
    else:
        info = await store.create_export(wanted)
    return info, export_body(store, info)


class _Records:
    """Stored records as a body: Playout lines as they are; DV360 requests, 1000 to a body."""

    def __init__(self, buyer: str) -> None:
        self.batched = buyer == DV360
        self.pending: list[str] = []

    def add(self, rows: list[tuple[Any, ...]]) -> bytes:
        """The body bytes these rows complete."""
        if not self.batched:
            return "".join([row[0] for row in rows]).encode()
        self.pending.extend(row[0] for row in rows)
        full = len(self.pending) // DV360_BATCH * DV360_BATCH
        bodies = [
            dv360_body(self.pending[i : i + DV360_BATCH]) for i in range(0, full, DV360_BATCH)
        ]
        del self.pending[:full]
        return b"".join(bodies)

    def rest(self) -> bytes:
        """The last, partial DV360 request body, if any."""
        return dv360_body(self.pending) if self.pending else b""


def export_body(store: Store, info: ExportInfo) -> AsyncGenerator[bytes, None]:
    """An export's file, streamed from the ledger in export order: the same bytes every time."""
    return _stream(ledger.export_records(store, info.export_id), _Records(info.buyer))


async def _stream(
    chunks: AsyncGenerator[list[tuple[Any, ...]], None], records: _Records
) -> AsyncGenerator[bytes, None]:
    async with aclosing(chunks):
        # The first piece waits for the first rows, so that a store that cannot answer
        # fails the request before its status line is sent.
        yield records.add(await anext(chunks, []))
        async for rows in chunks:
            piece = records.add(rows)
            if piece:
                yield piece
    last = records.rest()
    if last:
        yield last


def headers(info: ExportInfo) -> dict[str, str]:
    """What a buyer's script reads before the body: the export's id and counts."""
    name = f"{info.buyer}-{info.export_id}.{EXTENSION[info.buyer]}"
    return {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Playproof-Export-Id": str(info.export_id),
        "X-Playproof-Export-Plays": str(info.plays),
        "X-Playproof-Export-Skipped": str(info.skipped),
    }


async def summary(store: Store, export_id: int) -> dict[str, Any]:
    """What an export was asked, what it holds, and its plays listed apart per reason."""
    info = await find_export(store, export_id)
    return {
        "export_id": info.export_id,
        "buyer": info.buyer,
        "created_at": rfc3339(info.created_at),
        "since_last": info.since_last,
        "from": rfc3339(info.start),
        "to": rfc3339(info.end),
        "seller_id": info.seller_id,
        "catalog_version": info.catalog_version,
        "plays": info.plays,
        "skipped": info.skipped,
        "skipped_by_reason": await ledger.reason_counts(store, export_id),
        "file": f"/v1/exports/{info.buyer}?export_id={info.export_id}",
        "skipped_plays": f"/v1/exports/{info.export_id}/skipped",
    }


def skipped_values(row: tuple[Any, ...]) -> list[Any]:
    """A play listed apart as shown: RFC 3339 times, its reasons as a list, final or not."""
    device_id, journal_id, seq, start, end, reasons, settled = row
    return [
        device_id,
        journal_id,
        seq,
        rfc3339(start),
        rfc3339(end),
        reasons.split(","),
        bool(settled),
    ]


async def skipped_body(store: Store, export_id: int, kind: str) -> AsyncGenerator[bytes, None]:
    """An export's plays listed apart, streamed: JSON (an object), CSV or NDJSON."""
    await find_export(store, export_id)
    chunks = ledger.skipped_rows(store, export_id)
    first = True
    # Something is always sent first (NDJSON: nothing), so that the route can wait for it.
    if kind == "json":
        yield encode({"export_id": export_id})[:-1] + b',"skipped":['
    else:
        yield csv_text(SKIPPED_FIELDS, []).encode() if kind == "csv" else b""
    async with aclosing(chunks):
        async for rows in chunks:
            items = [skipped_values(row) for row in rows]
            if kind == "csv":
                yield csv_text(None, items).encode()
                continue
            objects = [encode(dict(zip(SKIPPED_FIELDS, item, strict=True))) for item in items]
            if kind == "ndjson":
                yield b"".join(o + b"\n" for o in objects)
            else:
                yield (b"" if first else b",") + b",".join(objects)
            first = False
    if kind == "json":
        yield b"]}"
