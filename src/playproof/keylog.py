"""The key log: every device-key event, each entry chained to the one before by its hash.

Pure (no I/O). The service appends an entry for every key registered by a
device, added or revoked by an operator, and every change of a device's
self-enrolment or signature requirement (PROTOCOL.md section 7). Each entry
carries the SHA-256 of the previous entry's canonical JSON, so that an entry
rewritten, removed or slipped in afterwards breaks the chain at that entry; a
buyer who keeps the head (the last entry's hash) can tell later that nothing
before it changed. `chain_error` and `key_windows` are what an offline checker
(`playproof verify-evidence`) applies to a kept copy of the log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple, get_args

import msgspec

from playproof.errors import ProtocolError

Event = Literal[
    "registered",  # by the device itself (self-enrolment)
    "added",  # by an operator
    "revoked",  # by an operator; takes effect at `at`, on the service's clock
    "self_enrol_closed",
    "self_enrol_opened",
    "signatures_required",  # by an operator, before the device has a key
]
EVENTS: Final = get_args(Event)
# The previous hash of the first entry.
GENESIS: Final = "0" * 64
# Events that bring a key into the log: they carry its id and public key.
KEY_EVENTS: Final = frozenset({"registered", "added"})


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of the key log; `at` is the service's clock in epoch milliseconds."""

    entry: int  # 1, 2, 3... with no hole
    at: int
    event: Event
    device_id: str
    key_id: str | None
    public_key: str | None
    actor: str  # "device", or the operator's name
    prev_hash: str
    entry_hash: str


def active_between(registered_at: int, revoked_at: int | None, at_ms: int) -> bool:
    """Whether a record received at `at_ms` may be signed with a key registered at
    `registered_at` and revoked at `revoked_at` (None: never): [registered_at, revoked_at)."""
    return registered_at <= at_ms and (revoked_at is None or at_ms < revoked_at)


class KeyWindow(NamedTuple):
    """When a key of a device could sign: records received in [registered_at, revoked_at)."""

    public_key: str
    registered_at: int
    revoked_at: int | None

    def active_at(self, at_ms: int) -> bool:
        """Whether a record received at `at_ms` may be signed with this key."""
        return active_between(self.registered_at, self.revoked_at, at_ms)


def canonical(fields: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace: PROTOCOL.md section 2's canonical JSON."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def entry_hash(entry: KeyEntry) -> str:
    """SHA-256 (lowercase hex) of the canonical JSON of every field but `entry_hash`."""
    fields = msgspec.structs.asdict(entry)
    del fields["entry_hash"]
    return hashlib.sha256(canonical(fields)).hexdigest()


def append(
    prev: KeyEntry | None,
    at: int,
    event: Event,
    device_id: str,
    actor: str,
    key_id: str | None = None,
    public_key: str | None = None,
) -> KeyEntry:
    """The entry that follows `prev` (None: the first entry), its hash computed."""
    draft = KeyEntry(
        entry=1 if prev is None else prev.entry + 1,
        at=at,
        event=event,
        device_id=device_id,
        key_id=key_id,
        public_key=public_key,
        actor=actor,
        prev_hash=GENESIS if prev is None else prev.entry_hash,
        entry_hash="",
    )
    return msgspec.structs.replace(draft, entry_hash=entry_hash(draft))


def chain_error(
    entries: Sequence[KeyEntry], after: KeyEntry | None = None, head: str | None = None
) -> str:
    """Where and how the chain breaks ("" when it holds).

    `entries` follow `after` (None: they start the log at entry 1). `head`, when
    given, is the last entry's hash as kept by whoever served or saved the log.
    """
    prev = after
    for entry in entries:
        expected = 1 if prev is None else prev.entry + 1
        if entry.entry != expected:
            return f"entry {entry.entry}: numbers not consecutive, expected entry {expected}"
        want_prev = GENESIS if prev is None else prev.entry_hash
        if entry.prev_hash != want_prev:
            return (
                f"entry {entry.entry}: prev_hash mismatch: expected {want_prev}, "
                f"got {entry.prev_hash}"
            )
        computed = entry_hash(entry)
        if entry.entry_hash != computed:
            return (
                f"entry {entry.entry}: hash mismatch: its fields hash to {computed}, "
                f"it says {entry.entry_hash}"
            )
        prev = entry
    if head is not None:
        last = GENESIS if prev is None else prev.entry_hash
        if head != last:
            where = "no entry" if prev is None else f"entry {prev.entry}"
            return f"head mismatch: the log says {head}, {where} hashes to {last}"
    return ""


def head_of(entries: Sequence[KeyEntry], after: KeyEntry | None = None) -> str:
    """The hash a reader keeps: the last entry's, or GENESIS for an empty log."""
    if entries:
        return entries[-1].entry_hash
    return GENESIS if after is None else after.entry_hash


def key_windows(entries: Sequence[KeyEntry]) -> dict[tuple[str, str], KeyWindow]:
    """Per (device_id, key_id), the key and when it could sign, from the log's events.

    A key is registered once (the service refuses it again after a revocation);
    a later registration of the same id would not reopen its window.
    """
    windows: dict[tuple[str, str], KeyWindow] = {}
    for entry in entries:
        if entry.key_id is None:
            continue
        key = (entry.device_id, entry.key_id)
        if entry.event in KEY_EVENTS and key not in windows and entry.public_key is not None:
            windows[key] = KeyWindow(entry.public_key, entry.at, None)
        elif entry.event == "revoked" and key in windows and windows[key].revoked_at is None:
            windows[key] = windows[key]._replace(revoked_at=entry.at)
    return windows


class KeyLog(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The key log as `GET /v1/keys` serves it and a buyer keeps it (KEYLOG.json)."""

    entries: list[KeyEntry]
    head: str
    # Set when the answer stops before the log's end: ask again with ?after=<next_after>.
    next_after: int | None = None


def document(
    entries: Sequence[KeyEntry], after: KeyEntry | None = None, next_after: int | None = None
) -> bytes:
    """The log (or a page of it) as JSON: entries, and the head a reader keeps."""
    doc = KeyLog(list(entries), head_of(entries, after), next_after)
    return msgspec.json.encode(doc)


def parse_document(data: bytes) -> KeyLog:
    """A kept log document, or ProtocolError saying what is wrong with it."""
    try:
        return msgspec.json.decode(data, type=KeyLog)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"expected a key log document (entries, head): {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"expected a key log document as JSON: {exc}") from None
