"""The evidence export's read on both stores: impressions back as the records devices sealed."""

from __future__ import annotations

from playproof.protocol import Record, record_json, seal
from playproof.signing import KeyPair, sign, signature_error
from playproof.stores.base import Store
from playproof.stores.evidence import evidence
from tests.stores.pipeline import batch, commit
from tests.support import now_ms, record_fields

KEYS = KeyPair.generate()


def signed(seq: int, end: int) -> Record:
    record = Record(**record_fields(seq=seq, end_ts=end))
    record.panel_state, record.panel_source = "standby", "mdc"
    return sign(record, KEYS)


async def test_each_row_comes_back_as_its_wire_record_byte_for_byte(store: Store) -> None:
    end = now_ms() - 10_000
    sent = [
        seal(Record(**record_fields(seq=1, end_ts=end - 2000, clock_synced=False))),
        signed(2, end - 1000),
        signed(3, end),
    ]
    await commit(store, batch(list(sent)))
    pages = [page async for page in evidence(store, end - 3_600_000, end + 1)]
    found = [item for page in pages for item in page]
    assert [record_json(x.record) for x in found] == [record_json(r) for r in sent]
    assert [x.record.v for x in found] == [1, 2, 2]
    assert signature_error(found[1].record, KEYS.public) == ""
    # A panel seen in standby makes the play partial: never verified.
    assert [(x.status, x.verification) for x in found] == [
        ("valid", "pending"),
        ("partial", None),
        ("partial", None),
    ]
    assert all(isinstance(x.received_at, int) and x.reasons == () for x in found)


async def test_only_plays_that_started_in_the_window_are_read(store: Store) -> None:
    end = now_ms() - 10_000
    records = [signed(seq, end - (5 - seq) * 20_000) for seq in range(1, 6)]
    await commit(store, batch(list(records)))
    start_of = {r.seq: r.start_ts for r in records}
    window = (start_of[2], start_of[4])  # [from, to): 2 and 3
    got = [x.record.seq async for page in evidence(store, *window) for x in page]
    assert got == [2, 3]
