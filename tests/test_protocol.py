"""The wire types and checksum against PROTOCOL.md and ../shared/protocol/vectors.json."""

from __future__ import annotations

import hashlib
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof import protocol
from playproof.errors import EnvelopeError, RecordError, TooLarge
from playproof.protocol import InvalidRecord, Record
from tests.support import SHARED, make_record, record_fields

VECTORS = json.loads((SHARED / "vectors.json").read_text())


def test_vectors_file_is_present_and_not_empty() -> None:
    assert len(VECTORS) >= 3


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"seq{v['record']['seq']}")
def test_checksum_matches_every_vector(vector: dict[str, object]) -> None:
    record = protocol.decode_record(json.dumps(vector["record"]).encode())
    assert protocol.canonical_bytes(record).decode() == vector["canonical"]
    assert protocol.compute_checksum(record) == vector["checksum"]
    assert protocol.checksum_ok(record)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"seq{v['record']['seq']}")
def test_canonical_bytes_equal_the_reference_json_dumps(vector: dict[str, object]) -> None:
    rec = dict(vector["record"])  # type: ignore[call-overload]
    rec.pop("checksum")
    reference = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    assert (
        protocol.canonical_bytes(protocol.decode_record(json.dumps(vector["record"]).encode()))
        == reference
    )


ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
ints = st.integers(min_value=0, max_value=protocol.MAX_INT)


@given(
    device=ids,
    journal=ids,
    seq=st.integers(1, protocol.MAX_INT),
    start=ints,
    offset=st.integers(-(10**9), 10**9),
    synced=st.booleans(),
)
def test_checksum_equals_sha256_of_sorted_json_for_any_record(
    device: str, journal: str, seq: int, start: int, offset: int, synced: bool
) -> None:
    fields = record_fields(
        device_id=device,
        journal_id=journal,
        seq=seq,
        start_ts=start,
        end_ts=start,
        clock_offset_ms=offset,
        clock_synced=synced,
    )
    reference = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    assert protocol.compute_checksum(Record(**fields)) == reference.hexdigest()


def test_changing_any_value_changes_the_checksum() -> None:
    record = make_record()
    tampered = msgspec.structs.replace(record, duration_ms=record.duration_ms + 1)
    assert not protocol.checksum_ok(tampered)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"seq": 0}, "seq"),
        ({"seq": 1.0}, "float"),
        ({"seq": True}, "bool"),
        ({"seq": "1"}, "str"),
        ({"v": 2}, "v"),
        ({"device_id": "has space"}, "device_id"),
        ({"device_id": "x" * 65}, "device_id"),
        ({"end_reason": "paused"}, "end_reason"),
        ({"expected_ms": 0}, "expected_ms"),
        ({"duration_ms": -1}, "duration_ms"),
        ({"start_ts": 2**63}, "start_ts"),
        ({"screenshot_sha256": "ABC"}, "screenshot_sha256"),
        ({"typo_field": 1}, "unknown field"),
        ({"clock_synced": 1}, "clock_synced"),
    ],
)
def test_a_malformed_record_is_an_error_naming_the_field(
    change: dict[str, object], expected: str
) -> None:
    fields = json.loads(protocol.encode(make_record()))
    fields.update(change)
    with pytest.raises(RecordError, match=expected):
        protocol.decode_record(json.dumps(fields).encode())


def test_a_missing_checksum_is_an_invalid_record() -> None:
    fields = json.loads(protocol.encode(make_record()))
    del fields["checksum"]
    with pytest.raises(RecordError, match="checksum"):
        protocol.decode_record(json.dumps(fields).encode())


def test_one_bad_record_spoils_only_itself() -> None:
    good = json.loads(protocol.encode(make_record(seq=1)))
    bad = dict(good, seq=2, end_reason="nope")
    body = json.dumps({"device_id": "scr-1", "sent_at": 1, "impressions": [good, bad, "x"]})
    batch = protocol.decode_batch(body.encode())
    assert isinstance(batch.items[0], Record)
    assert isinstance(batch.items[1], InvalidRecord) and batch.items[1].seq == 2
    assert isinstance(batch.items[2], InvalidRecord) and batch.items[2].seq is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "JSON"),
        (b"[]", "envelope"),
        (b'{"device_id": "a", "sent_at": 1}', "impressions"),
        (b'{"device_id": "a", "sent_at": "1", "impressions": []}', "sent_at"),
        (b'{"device_id": "a", "sent_at": 1, "impressions": [], "extra": 1}', "extra"),
        (b'{"device_id": "a", "sent_at": 1, "impressions": {}}', "impressions"),
        (b"\xff\xfe", "JSON"),
    ],
)
def test_a_malformed_envelope_is_an_envelope_error(body: bytes, expected: str) -> None:
    with pytest.raises(EnvelopeError, match=expected):
        protocol.decode_batch(body)


def test_more_than_1000_records_is_too_large() -> None:
    rec = json.loads(protocol.encode(make_record()))
    body = json.dumps({"device_id": "scr-1", "sent_at": 1, "impressions": [rec] * 1001})
    with pytest.raises(TooLarge, match="1000"):
        protocol.decode_batch(body.encode())


def test_stream_frames_carry_their_id_and_status_frames_are_told_apart() -> None:
    frame = json.dumps({"id": 17, "device_id": "scr-1", "sent_at": 5, "impressions": []}).encode()
    assert protocol.frame_head(frame) == (17, False)
    assert protocol.decode_stream_batch(frame).frame_id == 17
    status = json.dumps({"type": "status", "id": 3, "device_id": "scr-1", "sent_at": 5}).encode()
    assert protocol.frame_head(status) == (3, True)
    assert protocol.frame_head(b"nonsense") == (None, False)


def test_status_ignores_unknown_fields_and_takes_floats() -> None:
    body = json.dumps(
        {
            "type": "status",
            "device_id": "scr-1",
            "sent_at": 5,
            "drift_ppm": 3.5,
            "future_field": {"nested": True},
            "evicted_ranges": [[1, 4]],
        }
    )
    status = protocol.decode_status(body.encode())
    assert status.drift_ppm == 3.5 and status.evicted_ranges == [(1, 4)]


def test_acks_omit_fields_their_result_does_not_have() -> None:
    acks = [
        protocol.Ack(1, "accepted", "valid", 100, []),
        protocol.Ack(2, "duplicate"),
        protocol.Ack(3, "rejected", reason="stale"),
    ]
    assert json.loads(protocol.encode(acks)) == [
        {"seq": 1, "result": "accepted", "status": "valid", "quality": 100, "flags": []},
        {"seq": 2, "result": "duplicate"},
        {"seq": 3, "result": "rejected", "reason": "stale"},
    ]
