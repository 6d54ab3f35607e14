"""The evidence export for buyers: `GET /v1/exports/evidence` and `playproof export evidence`.

NDJSON, one line per impression that started in [from, to) (start_ts, like every
report and export; a buyer asks for the plays of a period):

    {"record": {...}, "received_at": 1795481420000, "status": "valid",
     "verification": {"result": "verified", "reasons": []}}

`record` is the wire record exactly as the device sealed it (every field,
`checksum`, and in version 2 `key_id`, the panel fields and `sig`), so that
`playproof verify-evidence` (evidence.py) can recompute its canonical bytes,
checksum and signature with no help from the service. `verification` is null
for a partial play, which is never verified. Unlike the buyer exports, nothing
is recorded in a ledger: the same range gives the same plays again (with their
verification as it stands).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Final

import msgspec
from starlette.datastructures import QueryParams

from playproof.errors import ProtocolError
from playproof.protocol import record_json
from playproof.server.params import Params, time_range
from playproof.stores import evidence as store_evidence
from playproof.stores.base import Store

EVIDENCE_PARAMS: Final = ("from", "to")


class Verification(msgspec.Struct):
    """What the verifier made of a valid play."""

    result: str
    reasons: list[str]


class Line(msgspec.Struct):
    """One line of the export."""

    record: msgspec.Raw
    received_at: int
    status: str
    verification: Verification | None


_encoder = msgspec.json.Encoder()


def line(item: store_evidence.Evidence) -> bytes:
    """One impression as a line of the export, newline included."""
    verification = (
        None if item.verification is None else Verification(item.verification, list(item.reasons))
    )
    raw = msgspec.Raw(record_json(item.record))
    return _encoder.encode(Line(raw, item.received_at, item.status, verification)) + b"\n"


def window(query: QueryParams | Mapping[str, str]) -> tuple[int, int]:
    """The [from, to) a request names; both are required: evidence is always of a period."""
    start, end = time_range(Params(query, EVIDENCE_PARAMS), required=True)
    if start is None or end is None:  # time_range(required=True) has said so already
        raise ProtocolError("expected `from` and `to`")
    return start, end


async def body(store: Store, start: int, end: int) -> AsyncIterator[bytes]:
    """The export's body, a page of impressions a chunk. The first chunk comes only once the
    store has answered (b"" when nothing matched), so that a caller reading it first fails
    before the status line when the store cannot answer."""
    answered = False
    async with aclosing(store_evidence.evidence(store, start, end)) as pages:
        async for page in pages:
            answered = True
            yield b"".join(line(item) for item in page)
    if not answered:
        yield b""
