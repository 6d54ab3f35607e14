"""signing.py against every entry of vectors-v2.json, in both directions, and hypothesis."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.errors import KeyRefused, RecordError
from playproof.protocol import (
    Record,
    canonical_bytes,
    checksum_ok,
    compute_checksum,
    decode_record,
)
from playproof.signing import KeyPair, check_public_key, key_id_of, sign, signature_error
from tests.support import SHARED

VECTORS: dict[str, Any] = json.loads((SHARED / "vectors-v2.json").read_text())
KEYS = KeyPair.from_seed(bytes.fromhex(VECTORS["private_key_seed_hex"]))
PUBLIC = bytes.fromhex(VECTORS["public_key_hex"])


def decoded(entry: dict[str, Any]) -> Record:
    return decode_record(json.dumps(entry["record"]).encode())


def test_the_published_seed_gives_the_published_public_key_and_key_id() -> None:
    assert KEYS.public == PUBLIC
    assert KEYS.key_id == VECTORS["key_id"] == key_id_of(PUBLIC)
    assert check_public_key(VECTORS["public_key_hex"], VECTORS["key_id"]) == PUBLIC


@pytest.mark.parametrize("entry", VECTORS["vectors"], ids=lambda e: f"seq{e['record']['seq']}")
def test_a_vector_decodes_to_its_canonical_bytes_checksum_and_a_signature_that_verifies(
    entry: dict[str, Any],
) -> None:
    record = decoded(entry)
    assert canonical_bytes(record).decode() == entry["canonical"]
    assert compute_checksum(record) == entry["checksum"] == record.checksum
    assert signature_error(record, PUBLIC) == ""


@pytest.mark.parametrize("entry", VECTORS["vectors"], ids=lambda e: f"seq{e['record']['seq']}")
def test_re_signing_a_vector_from_the_seed_reproduces_its_checksum_and_signature_exactly(
    entry: dict[str, Any],
) -> None:
    fields = {
        k: v for k, v in entry["record"].items() if k not in ("checksum", "sig", "key_id", "v")
    }
    fields["v"] = 1  # `sign` makes it version 2 and sets the key id
    record = sign(Record(**fields), KEYS)
    # Ed25519 is deterministic (RFC 8032): the same key and bytes give the same signature.
    assert (record.checksum, record.sig) == (entry["checksum"], entry["sig"])
    assert canonical_bytes(record).decode() == entry["canonical"]
    wire = json.loads(msgspec.json.encode(record))
    assert wire == entry["record"]


@pytest.mark.parametrize("entry", VECTORS["bad_signature"], ids=lambda e: e["why"][:30])
def test_each_bad_signature_vector_fails_for_its_reason(entry: dict[str, Any]) -> None:
    record = decoded(entry)
    # Its checksum holds: only the signature (or its key) is wrong.
    assert checksum_ok(record)
    why = entry["why"]
    if "not registered" in why:
        assert record.key_id != VECTORS["key_id"]
        assert signature_error(record, PUBLIC) != ""
    elif "S + L" in why:
        assert "not canonical" in signature_error(record, PUBLIC)
    else:
        assert "does not verify" in signature_error(record, PUBLIC)


@pytest.mark.parametrize("entry", VECTORS["invalid"], ids=lambda e: e["why"][:30])
def test_each_invalid_vector_does_not_decode(entry: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        decoded(entry)


@pytest.mark.parametrize("entry", VECTORS["refused_public_keys"], ids=lambda e: e["why"][:30])
def test_each_refused_public_key_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(KeyRefused):
        check_public_key(entry["public_key_hex"], entry.get("key_id"))


def test_the_identity_points_universal_signature_is_refused_with_its_key() -> None:
    [identity] = [e for e in VECTORS["refused_public_keys"] if "universal_sig" in e]
    record = decoded(VECTORS["vectors"][0])
    record.key_id, record.sig = identity["key_id"], identity["universal_sig"]
    # OpenSSL would accept this forgery: the key must never be registered.
    with pytest.raises(KeyRefused, match="small-order"):
        check_public_key(identity["public_key_hex"], identity["key_id"])


# Every signed field, and a value for it that differs from the vector's.
CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "device_id": st.sampled_from(["scr-0043", "scr-1"]),
    "journal_id": st.sampled_from(["j-other", "j-7f3a9d"]),
    "seq": st.integers(2, 2**53 - 1),
    "campaign_id": st.sampled_from(["cmp-101", "cmp-1"]),
    "ad_group_id": st.just("ag-8"),
    "content_id": st.just("cnt-56"),
    "store_id": st.just("store-13"),
    "supplier_id": st.just("sup-4"),
    "start_ts": st.integers(0, 1_795_481_399_999),
    "end_ts": st.integers(1_795_481_415_003, 2**53 - 1),
    "duration_ms": st.integers(0, 15_001),
    "expected_ms": st.integers(1, 14_999),
    "end_reason": st.sampled_from(["skipped", "interrupted", "error", "device_restart"]),
    "clock_offset_ms": st.integers(-(2**53) + 1, -13),
    "clock_synced": st.just(False),
    "screenshot_sha256": st.just(None),
    "screenshot_at_ms": st.integers(0, 7320),
    "panel_state": st.sampled_from(["standby", "off", "no_signal", "unknown"]),
    "panel_source": st.sampled_from(["drm", "mdc", "rs232", "vendor", "none"]),
}


@given(data=st.data(), name=st.sampled_from(sorted(CHANGES)))
def test_any_single_changed_field_breaks_the_signature(data: st.DataObject, name: str) -> None:
    record = decoded(VECTORS["vectors"][0])
    value = data.draw(CHANGES[name])
    setattr(record, name, value)
    record.checksum = compute_checksum(record)  # a forger can always fix the checksum
    assert signature_error(record, PUBLIC) == f"signature does not verify under key {KEYS.key_id}"


@given(flip=st.integers(0, 511))
def test_any_single_flipped_bit_of_the_signature_breaks_it(flip: int) -> None:
    record = decoded(VECTORS["vectors"][0])
    sig = bytearray(bytes.fromhex(str(record.sig)))
    sig[flip // 8] ^= 1 << (flip % 8)
    record.sig = sig.hex()
    assert signature_error(record, PUBLIC) != ""
