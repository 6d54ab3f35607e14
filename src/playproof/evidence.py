"""What a buyer checks alone on an evidence export (`playproof verify-evidence`): pure, no I/O.

Given the lines of an evidence export (`GET /v1/exports/evidence`) and a kept copy
of the key log (`GET /v1/keys`), this checks the log's hash chain, then for each
line recomputes the record's canonical bytes and checksum, finds the key the
record names among the keys the log registered for its device, applies that key's
registration and revocation to the record's `received_at`, and verifies the
Ed25519 signature. Nothing here asks the service or a database anything.

Outcomes per record: `good` (signed by a key registered for that device and
active when the record was received, and unchanged since), `bad` (anything that
does not hold, or a line that cannot be read), `unknown_key` (the key is not in
the log for that device), `unsigned` (version 1, from a device that had no key and
no signature requirement yet when the record was received: it proves nothing, and
is not a failure; a version-1 record received after that is `bad`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import msgspec

from playproof.errors import KeyRefused, RecordError
from playproof.keylog import KeyLog, KeyWindow, chain_error, key_windows
from playproof.protocol import Record, checksum_ok, decode_record
from playproof.signing import check_public_key, signature_error

GOOD: Final = "good"
BAD: Final = "bad"
UNKNOWN_KEY: Final = "unknown_key"
UNSIGNED: Final = "unsigned"
OUTCOMES: Final = (GOOD, BAD, UNKNOWN_KEY, UNSIGNED)
# Outcomes that make the whole check fail.
FAILING: Final = frozenset((BAD, UNKNOWN_KEY))
# The device of a line too broken to name one.
UNREADABLE: Final = "?"
# Failures kept with their detail (every one is counted).
MAX_DETAILS: Final = 100
# Log events after which a device's version-1 records are refused by the service.
_SIGNING_EVENTS: Final = frozenset(("registered", "added", "signatures_required"))


class _Line(msgspec.Struct):
    record: msgspec.Raw
    received_at: int
    status: Any = None
    verification: Any = None


_line_decoder = msgspec.json.Decoder(_Line)
# What decoding hostile bytes raises (as protocol.py's decoders).
_UNREADABLE: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeError)


class Outcome(NamedTuple):
    """What one line of the export came to."""

    device_id: str
    outcome: str
    detail: str = ""


@dataclass
class Report:
    """The whole check: the chain, counts per device and outcome, the first failures."""

    chain: str = ""  # "" when the key log's chain holds
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[tuple[int, Outcome]] = field(default_factory=list)  # (line number, outcome)

    @property
    def ok(self) -> bool:
        """Whether the chain holds and no record failed."""
        return not self.chain and not any(
            counts[o] for counts in self.counts.values() for o in FAILING
        )

    def add(self, number: int, outcome: Outcome) -> None:
        """Count one line's outcome (and keep its detail if it failed)."""
        self.counts.setdefault(outcome.device_id, Counter())[outcome.outcome] += 1
        if outcome.outcome in FAILING and len(self.failures) < MAX_DETAILS:
            self.failures.append((number, outcome))


class Keys:
    """The key log applied: each device's keys with their windows, and since when it signs."""

    def __init__(self, log: KeyLog) -> None:
        self.windows: Mapping[tuple[str, str], KeyWindow] = key_windows(log.entries)
        self.signing_since: dict[str, int] = {}
        for entry in log.entries:
            if entry.event in _SIGNING_EVENTS and entry.device_id not in self.signing_since:
                self.signing_since[entry.device_id] = entry.at
        self._raw: dict[tuple[str, str], bytes | str] = {}

    def public_key(self, device_id: str, key_id: str) -> bytes | str:
        """The raw key registered as `key_id`, or why it cannot be used (checked once)."""
        found = self._raw.get((device_id, key_id))
        if found is None:
            window = self.windows[(device_id, key_id)]
            try:
                found = check_public_key(window.public_key, key_id)
            except KeyRefused as exc:
                found = f"the log's key {key_id} is refused: {exc}"
            self._raw[(device_id, key_id)] = found
        return found


def chain_problem(log: KeyLog) -> str:
    """What is wrong with the key log's chain ("" when it holds from entry 1 to its head)."""
    if log.next_after is not None:
        return f"the key log is one page (next_after {log.next_after}): keep the whole log"
    return chain_error(log.entries, head=log.head)


def check_record(record: Record, received_at: int, keys: Keys) -> Outcome:
    """One record against the key log, as received at `received_at`."""
    device = record.device_id
    if not checksum_ok(record):
        return Outcome(device, BAD, f"seq {record.seq}: checksum does not match the values")
    if record.v == 1:
        since = keys.signing_since.get(device)
        if since is not None and since <= received_at:
            return Outcome(
                device,
                BAD,
                f"seq {record.seq}: version 1 received at {received_at}, "
                f"but the device signs since {since}",
            )
        return Outcome(device, UNSIGNED)
    key_id = str(record.key_id)
    window = keys.windows.get((device, key_id))
    if window is None:
        return Outcome(device, UNKNOWN_KEY, f"seq {record.seq}: key {key_id} not in the log")
    if not window.active_at(received_at):
        return Outcome(
            device,
            BAD,
            f"seq {record.seq}: received at {received_at}, outside key {key_id}'s window "
            f"[{window.registered_at}, {window.revoked_at})",
        )
    public = keys.public_key(device, key_id)
    if isinstance(public, str):
        return Outcome(device, BAD, f"seq {record.seq}: {public}")
    error = signature_error(record, public)
    if error:
        return Outcome(device, BAD, f"seq {record.seq}: {error}")
    return Outcome(device, GOOD)


def check_line(line: bytes, keys: Keys) -> Outcome:
    """One line of the export: decoded strictly, then `check_record`."""
    try:
        parsed = _line_decoder.decode(line)
    except (
        msgspec.DecodeError,
        msgspec.ValidationError,
        RecursionError,
        UnicodeDecodeError,
    ) as exc:
        return Outcome(UNREADABLE, BAD, f"not an evidence line: {exc}")
    try:
        record = decode_record(bytes(parsed.record))
    except RecordError as exc:
        return Outcome(_device_of(bytes(parsed.record)), BAD, str(exc))
    return check_record(record, parsed.received_at, keys)


def _device_of(raw: bytes) -> str:
    try:
        found = msgspec.json.decode(raw)
    except _UNREADABLE:
        return UNREADABLE
    device = found.get("device_id") if isinstance(found, dict) else None
    return device if isinstance(device, str) and device else UNREADABLE


def verify(lines: Iterable[bytes], log: KeyLog) -> Report:
    """Check the key log's chain, then every non-empty line of an evidence export."""
    report = Report(chain=chain_problem(log))
    keys = Keys(log)
    for number, line in enumerate(lines, 1):
        if line.strip():
            report.add(number, check_line(line, keys))
    return report
