"""The evidence export's read, shared by both stores: impressions back as their wire records.

An impression row holds every field of the record a device sent (RECORD_COLUMNS;
version 2's four are NULL in a version-1 row), so the record can be rebuilt
exactly as it was checksummed and signed. Rows stream from one snapshot, a page
at a time, so an export of any size holds one page in memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Final, NamedTuple

from msgspec import UNSET

from playproof.protocol import SIGNED_FIELDS, SIGNED_VERSION, VERSION, Record
from playproof.stores.base import RECORD_COLUMNS, Reader, Store
from playproof.stores.queries import placeholder

# What the export adds to the record: when it arrived, and what became of it.
EXTRA_COLUMNS: Final = ("received_at", "status", "verification", "verification_reasons")
PAGE: Final = 2000


class Evidence(NamedTuple):
    """One impression as evidence: the record as its device sealed it, and its fate."""

    record: Record
    received_at: int
    status: str  # valid or partial
    verification: str | None  # verified, failed, pending; None for a partial play
    reasons: tuple[str, ...]


def evidence_sql(store: Reader) -> str:
    """Impressions that started in [from, to), in a stable order (start, then key)."""
    ph = placeholder(store)
    return (
        f"SELECT {', '.join((*RECORD_COLUMNS, *EXTRA_COLUMNS))} FROM impressions "
        f"WHERE start_ts >= {ph} AND start_ts < {ph} "
        "ORDER BY start_ts, device_id, journal_id, seq"
    )


def record_of(values: dict[str, Any]) -> Record:
    """A record from its stored columns: version 2 when `key_id` is set, else version 1."""
    signed = values.get("key_id") is not None
    fields = dict(values)
    if not signed:
        for name in SIGNED_FIELDS:
            fields[name] = UNSET
    # SQLite keeps booleans as 0 and 1.
    fields["clock_synced"] = bool(fields["clock_synced"])
    return Record(**fields, v=SIGNED_VERSION if signed else VERSION)


def evidence_of(row: tuple[Any, ...]) -> Evidence:
    """One row of `evidence_sql` as Evidence."""
    width = len(RECORD_COLUMNS)
    record = record_of(dict(zip(RECORD_COLUMNS, row[:width], strict=True)))
    received_at, status, verification, reasons = row[width:]
    return Evidence(
        record,
        int(received_at),
        str(status),
        None if verification is None else str(verification),
        tuple(r for r in str(reasons or "").split(",") if r),
    )


async def evidence(store: Store, start: int, end: int) -> AsyncGenerator[list[Evidence], None]:
    """Every impression that started in [start, end), a page at a time, from one snapshot."""
    async for rows in store.stream_rows(evidence_sql(store), (start, end), PAGE):
        yield [evidence_of(row) for row in rows]
