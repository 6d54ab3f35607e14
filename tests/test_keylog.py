"""The key log's hash chain: any change to any entry is caught at that entry."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playproof import keylog
from playproof.errors import ProtocolError
from playproof.keylog import GENESIS, KeyEntry, KeyWindow

HEX = "0123456789abcdef"
key_ids = st.text(HEX, min_size=16, max_size=16)
public_keys = st.text(HEX, min_size=64, max_size=64)
events = st.sampled_from(keylog.EVENTS)
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@st.composite
def chains(draw: st.DrawFn, min_size: int = 1) -> list[KeyEntry]:
    """A sound log of a few entries, as the service appends them."""
    entries: list[KeyEntry] = []
    at = draw(st.integers(0, 2**40))
    for _ in range(draw(st.integers(min_size, 8))):
        at += draw(st.integers(0, 10**6))
        event = draw(events)
        keyed = event in ("registered", "added", "revoked")
        entries.append(
            keylog.append(
                entries[-1] if entries else None,
                at,
                event,
                draw(ids),
                draw(st.sampled_from(["device", "ops-1", "cli:root"])),
                draw(key_ids) if keyed else None,
                draw(public_keys) if event in keylog.KEY_EVENTS else None,
            )
        )
    return entries


def _changed(value: Any, field: str) -> Any:
    """Another value of the field's type."""
    if field in ("entry", "at"):
        return value + 1
    if field == "event":
        return next(e for e in keylog.EVENTS if e != value)
    if value is None:
        return "0" * 16
    return value[:-1] + ("1" if value[-1] != "1" else "2")


@settings(max_examples=300)
@given(chains(), st.data())
def test_changing_any_field_of_any_entry_breaks_the_chain_at_that_entry(
    entries: list[KeyEntry], data: st.DataObject
) -> None:
    assert keylog.chain_error(entries) == ""
    index = data.draw(st.integers(0, len(entries) - 1))
    field = data.draw(st.sampled_from(KeyEntry.__struct_fields__))
    entry = entries[index]
    tampered = list(entries)
    tampered[index] = msgspec.structs.replace(
        entry, **{field: _changed(getattr(entry, field), field)}
    )
    error = keylog.chain_error(tampered)
    assert error.startswith(f"entry {tampered[index].entry}:"), error


@given(chains())
def test_an_entry_rehashed_after_a_change_breaks_the_chain_at_the_next_entry(
    entries: list[KeyEntry],
) -> None:
    """Whoever rewrites an entry and its hash still breaks the link the next entry holds."""
    *head, last = entries
    if not head:
        return
    rewritten = msgspec.structs.replace(head[-1], actor="someone-else")
    rewritten = msgspec.structs.replace(rewritten, entry_hash=keylog.entry_hash(rewritten))
    error = keylog.chain_error([*head[:-1], rewritten, last])
    assert error.startswith(f"entry {last.entry}: prev_hash mismatch"), error


@given(chains(min_size=3))
def test_a_removed_entry_is_reported_where_the_numbers_stop_following(
    entries: list[KeyEntry],
) -> None:
    error = keylog.chain_error([entries[0], *entries[2:]])
    assert error == f"entry {entries[2].entry}: numbers not consecutive, expected entry 2"


@given(chains())
def test_the_head_kept_by_a_reader_must_be_the_last_entry_hash(entries: list[KeyEntry]) -> None:
    assert keylog.chain_error(entries, head=entries[-1].entry_hash) == ""
    assert keylog.chain_error(entries, head="f" * 64).startswith("head mismatch")
    assert keylog.chain_error(entries[:-1], head=entries[-1].entry_hash).startswith("head mismatch")


@given(chains(min_size=2))
def test_a_page_checks_against_the_entry_before_it(entries: list[KeyEntry]) -> None:
    assert keylog.chain_error(entries[1:], after=entries[0]) == ""
    assert keylog.chain_error(entries[1:]).startswith(f"entry {entries[1].entry}:")


def test_the_entry_hash_is_sha256_of_sorted_compact_json_without_entry_hash() -> None:
    """What a buyer recomputes in any language (PROTOCOL.md section 2's canonical JSON)."""
    entry = keylog.append(None, 1_795_481_400_000, "registered", "scr-0042", "device", "ab" * 8)
    fields = json.loads(msgspec.json.encode(entry))
    del fields["entry_hash"]
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert entry.entry_hash == hashlib.sha256(text.encode()).hexdigest()
    assert entry.prev_hash == GENESIS and entry.entry == 1


def test_key_windows_open_at_registration_and_close_at_revocation() -> None:
    first = keylog.append(None, 100, "registered", "scr-1", "device", "k1", "aa" * 32)
    other = keylog.append(first, 150, "added", "scr-2", "ops", "k2", "bb" * 32)
    locked = keylog.append(other, 160, "self_enrol_closed", "scr-1", "ops")
    revoked = keylog.append(locked, 200, "revoked", "scr-1", "ops", "k1")
    windows = keylog.key_windows([first, other, locked, revoked])
    assert windows == {
        ("scr-1", "k1"): KeyWindow("aa" * 32, 100, 200),
        ("scr-2", "k2"): KeyWindow("bb" * 32, 150, None),
    }
    assert [windows["scr-1", "k1"].active_at(t) for t in (99, 100, 199, 200)] == [
        False,
        True,
        True,
        False,
    ]


def test_the_log_document_round_trips_and_omits_next_after_when_whole() -> None:
    first = keylog.append(None, 100, "registered", "scr-1", "device", "k1", "aa" * 32)
    data = keylog.document([first])
    assert set(json.loads(data)) == {"entries", "head"}
    parsed = keylog.parse_document(data)
    assert parsed.entries == [first] and parsed.head == first.entry_hash
    assert json.loads(keylog.document([]))["head"] == GENESIS
    with pytest.raises(ProtocolError, match="key log document"):
        keylog.parse_document(b'{"entries": [], "head": "0", "extra": 1}')
