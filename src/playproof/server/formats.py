"""How operators' answers look: RFC 3339 times, seconds, and JSON, CSV or NDJSON bodies.

Times are RFC 3339 in UTC with milliseconds (`2026-11-01T09:30:00.000Z`),
durations seconds with millisecond precision (`15.123`). Exports stream: each
chunk of rows from the store becomes one chunk of the body, so a month of
impressions never sits in memory.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Final

import msgspec

from playproof.errors import ProtocolError

JSON: Final = "application/json"
CSV: Final = "text/csv; charset=utf-8"
NDJSON: Final = "application/x-ndjson"
FORMATS: Final = {"json": JSON, "csv": CSV, "ndjson": NDJSON}

_seconds: dict[int, str] = {}
_MILLIS: Final = tuple(f".{i:03d}Z" for i in range(1000))
_encoder = msgspec.json.Encoder()


def rfc3339(ms: int | None) -> str | None:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds; None stays None."""
    if ms is None:
        return None
    second = ms // 1000
    prefix = _seconds.get(second)
    if prefix is None:
        # Exports format millions of times; most share their second with another.
        if len(_seconds) > 500_000:
            _seconds.clear()
        prefix = _seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return prefix + _MILLIS[ms - second * 1000]


def day_label(local_midnight_ms: int) -> str:
    """A local date, given as its midnight read as UTC: `2026-11-01`."""
    return time.strftime("%Y-%m-%d", time.gmtime(local_midnight_ms // 1000))


def seconds(ms: int | None) -> float | None:
    """Milliseconds as seconds (exact to the millisecond); None stays None."""
    return None if ms is None else ms / 1000


def negotiate(accept: str | None, chosen: str | None) -> str:
    """`json`, `csv` or `ndjson`: the `format` parameter if given, else from Accept."""
    if chosen is not None:
        if chosen not in FORMATS:
            raise ProtocolError(f"expected `format` among json, csv, ndjson, got {chosen!r}")
        return chosen
    accept = (accept or "").lower()
    if "text/csv" in accept:
        return "csv"
    if "ndjson" in accept:
        return "ndjson"
    return "json"


def encode(value: Any) -> bytes:
    """JSON bytes of plain values."""
    return _encoder.encode(value)


def csv_text(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text (with the header first when given); lists joined by `;`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows([";".join(v) if isinstance(v, list) else v for v in row] for row in rows)
    return buf.getvalue()


def ndjson_bytes(fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows as JSON objects, one a line."""
    return _encoder.encode_lines([dict(zip(fields, row, strict=True)) for row in rows])


async def stream_body(
    head: bytes,
    chunks: AsyncGenerator[list[tuple[Any, ...]], None],
    render: Callable[[list[tuple[Any, ...]]], bytes],
) -> AsyncGenerator[bytes, None]:
    """An export body: `head`, then each chunk of rows rendered as one chunk of the body."""
    async with aclosing(chunks):
        # The first body chunk waits for the query's first rows, so that a store
        # that cannot answer fails the request before its status line is sent.
        rows: list[tuple[Any, ...]] = await anext(chunks, [])
        yield head + render(rows)
        async for rows in chunks:
            yield render(rows)


async def prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`first`, then the rest of a body."""
    yield first
    async for chunk in rest:
        yield chunk
