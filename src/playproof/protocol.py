"""The wire contract of PROTOCOL.md versions 1 and 2: records, envelopes, acks, status, checksum.

Decoding is strict: unknown fields, wrong types and out-of-range values are
errors, so that a typo never passes silently. The only module of ours this one
imports is the leaf `errors`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from playproof.errors import EnvelopeError, RecordError, TooLarge

VERSION: Final = 1
# Version 2 (section 7): a version-1 record with the panel's state, and the key and
# signature of the device that sealed it.
SIGNED_VERSION: Final = 2
SIGNED_FIELDS: Final = ("key_id", "panel_source", "panel_state", "sig")
MAX_BATCH_RECORDS: Final = 1000
MAX_BATCH_BYTES: Final = 1024 * 1024

# Integers are bounded so that every value fits a 64-bit database column and a
# JavaScript number; anything larger is not a real time, sequence or duration.
MAX_INT: Final = 2**53 - 1

ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"

# An id anywhere else (playlists, content, configuration): checked in full.
Id = Annotated[str, Meta(pattern=ID_PATTERN)]
# On the hot decode paths (records, envelopes, status) the character classes
# are checked after decoding, by one regex over all of a record's ids at once
# (`_text_ok`, `check_id`): a pattern per field costs msgspec several
# microseconds a record. The patterns stay in the JSON schema.
WireId = Annotated[
    str, Meta(min_length=1, max_length=64, extra_json_schema={"pattern": ID_PATTERN})
]
Sha256Hex = Annotated[
    str, Meta(min_length=64, max_length=64, extra_json_schema={"pattern": SHA256_PATTERN})
]
Millis = Annotated[int, Meta(ge=0, le=MAX_INT)]
SignedMillis = Annotated[int, Meta(ge=-MAX_INT, le=MAX_INT)]
Seq = Annotated[int, Meta(ge=1, le=MAX_INT)]
EndReason = Literal["completed", "skipped", "interrupted", "error", "device_restart"]
PanelState = Literal["on", "standby", "off", "no_signal", "unknown"]
PanelSource = Literal["cec", "drm", "mdc", "rs232", "vendor", "none"]
# Worst first: a play is recorded with the worst state observed during it.
PANEL_STATES: Final[tuple[str, ...]] = ("off", "standby", "no_signal", "unknown", "on")
PANEL_SOURCES: Final[tuple[str, ...]] = ("cec", "drm", "mdc", "rs232", "vendor", "none")
KeyIdHex = Annotated[
    str, Meta(min_length=16, max_length=16, extra_json_schema={"pattern": "^[0-9a-f]{16}$"})
]
SigHex = Annotated[
    str, Meta(min_length=128, max_length=128, extra_json_schema={"pattern": "^[0-9a-f]{128}$"})
]
Result = Literal["accepted", "duplicate", "rejected"]
PlayStatus = Literal["valid", "partial"]
RejectReason = Literal[
    "invalid",
    "bad_checksum",
    "forbidden",
    "stale",
    "clock_skew",
    "future_timestamp",
    "conflict",
    "bad_signature",
]
END_REASONS: Final[tuple[str, ...]] = (
    "completed",
    "skipped",
    "interrupted",
    "error",
    "device_restart",
)
REJECT_REASONS: Final[tuple[str, ...]] = (
    "invalid",
    "bad_checksum",
    "forbidden",
    "stale",
    "clock_skew",
    "future_timestamp",
    "conflict",
    "bad_signature",
)


class Record(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One play: PROTOCOL.md section 1 (and 7). `checksum` is UNSET until it is sealed.

    Fields are declared in code-point order, so that encoding the record with
    its checksum (and signature) UNSET yields its canonical bytes directly, with
    no sorting. Version 2's four fields are UNSET in a version-1 record, which
    therefore encodes exactly as before; `check_record` insists that a record
    carries them all (v 2) or none (v 1).
    """

    ad_group_id: WireId
    campaign_id: WireId
    checksum: Sha256Hex | UnsetType = UNSET
    clock_offset_ms: SignedMillis
    clock_synced: bool
    content_id: WireId
    device_id: WireId
    duration_ms: Millis
    end_reason: EndReason
    end_ts: Millis
    expected_ms: Annotated[int, Meta(ge=1, le=MAX_INT)]
    journal_id: WireId
    key_id: KeyIdHex | UnsetType = UNSET
    panel_source: PanelSource | UnsetType = UNSET
    panel_state: PanelState | UnsetType = UNSET
    screenshot_at_ms: Millis | None
    screenshot_sha256: Sha256Hex | None
    seq: Seq
    sig: SigHex | UnsetType = UNSET
    start_ts: Millis
    store_id: WireId
    supplier_id: WireId
    v: Literal[1, 2]


class Envelope(msgspec.Struct, forbid_unknown_fields=True):
    """A batch as it arrived; records stay raw so that one bad record spoils only itself."""

    device_id: WireId
    sent_at: Millis
    impressions: list[msgspec.Raw]


class _FastEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    device_id: WireId
    sent_at: Millis
    impressions: list[Record]


class StreamEnvelope(Envelope, forbid_unknown_fields=True):
    """A stream frame carrying a batch, with the id its ack answers."""

    id: SignedMillis


class _FastStreamEnvelope(_FastEnvelope, forbid_unknown_fields=True):
    id: SignedMillis


class InvalidRecord(msgspec.Struct):
    """A record that did not decode: kept raw, with the error and its seq if one was readable."""

    raw: bytes
    error: str
    seq: int | None


class Batch(msgspec.Struct):
    """A decoded envelope: each item is a Record or an InvalidRecord, in arrival order."""

    device_id: str
    sent_at: int
    items: list[Record | InvalidRecord]
    frame_id: int | None = None


class Ack(msgspec.Struct, omit_defaults=True):
    """The service's answer for one record: PROTOCOL.md section 4."""

    seq: int | None
    result: Result
    status: PlayStatus | UnsetType = UNSET
    quality: int | UnsetType = UNSET
    flags: list[str] | UnsetType = UNSET
    reason: RejectReason | UnsetType = UNSET


class AckMessage(msgspec.Struct):
    """The answer to a batch: one ack per record, in the order received."""

    received_at: int
    skew_ms: int
    acks: list[Ack]


class StreamAck(msgspec.Struct):
    """The answer to a stream frame, carrying the frame id it answers."""

    id: int
    received_at: int
    skew_ms: int
    acks: list[Ack]


class StreamError(msgspec.Struct, omit_defaults=True):
    """The answer to a frame that was not committed; the connection stays open.

    With `retry_after_ms` the frame may be sent again, unchanged, after that long
    (the store is unavailable, the service overloaded); without, the frame is wrong.
    """

    id: int | None
    error: str
    retry_after_ms: int | None = None


Number = int | float
_E = TypeVar("_E", Envelope, StreamEnvelope)


class Status(msgspec.Struct, kw_only=True):
    """Device health: not billed, no checksum, unknown fields ignored (section 3)."""

    type: Literal["status"] = "status"
    device_id: WireId
    journal_id: WireId | None = None
    sent_at: Millis
    queue_depth: Annotated[int, Meta(ge=0, le=MAX_INT)] | None = None
    oldest_queued_ts: Millis | None = None
    clock_offset_ms: Number | None = None
    drift_ppm: Number | None = None
    last_sync_ts: Millis | None = None
    evicted: Annotated[int, Meta(ge=0, le=MAX_INT)] = 0
    evicted_ranges: list[tuple[Seq, Seq]] = []
    version: Annotated[str, Meta(max_length=64)] | None = None
    # Version 2 (section 7): the device key, its registration state and alarm (why it
    # is not registered), and the panel's last observed state and its source.
    key_id: Annotated[str, Meta(max_length=64)] | None = None
    key_state: Annotated[str, Meta(max_length=32)] | None = None
    key_alarm: Annotated[str, Meta(max_length=1000)] | None = None
    panel_state: Annotated[str, Meta(max_length=32)] | None = None
    panel_source: Annotated[str, Meta(max_length=32)] | None = None


class _FrameHead(msgspec.Struct):
    id: Any = None
    type: Any = None


class _SeqProbe(msgspec.Struct):
    seq: Any = None


# What a decoder raises on hostile input: msgspec's errors, RecursionError for
# JSON nested deeper than the interpreter's limit, UnicodeDecodeError for bytes
# that are not UTF-8 inside a string.
_UNDECODABLE = (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError)

_record_decoder = msgspec.json.Decoder(Record)
_envelope_decoder = msgspec.json.Decoder(Envelope)
_fast_envelope_decoder = msgspec.json.Decoder(_FastEnvelope)
_stream_decoder = msgspec.json.Decoder(StreamEnvelope)
_fast_stream_decoder = msgspec.json.Decoder(_FastStreamEnvelope)
_status_decoder = msgspec.json.Decoder(Status)
_head_decoder = msgspec.json.Decoder(_FrameHead)
_seq_decoder = msgspec.json.Decoder(_SeqProbe)
_encoder = msgspec.json.Encoder()


def canonical_bytes(record: Record) -> bytes:
    """The record without its checksum and signature, as sorted, whitespace-free JSON
    (sections 2 and 7): what the checksum hashes and the signature signs."""
    saved, sig = record.checksum, record.sig
    record.checksum = record.sig = UNSET
    try:
        # Fields are declared sorted, ids are ASCII without escapes and ints are
        # plain: the output is byte for byte json.dumps(sort_keys=True, ...).
        return _encoder.encode(record)
    finally:
        record.checksum, record.sig = saved, sig


def compute_checksum(record: Record) -> str:
    """Lowercase hex SHA-256 of the record's canonical bytes."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def seal(record: Record) -> Record:
    """Set the record's checksum from its values and return it."""
    record.checksum = compute_checksum(record)
    return record


def checksum_ok(record: Record) -> bool:
    """Whether the record's checksum matches the one recomputed from its values."""
    return record.checksum == compute_checksum(record)


def encode(obj: object) -> bytes:
    """Encode any protocol object as JSON."""
    return _encoder.encode(obj)


_ID_FIELDS: Final = (
    "device_id",
    "journal_id",
    "campaign_id",
    "ad_group_id",
    "content_id",
    "store_id",
    "supplier_id",
)
_ID_CHARS: Final = r"[A-Za-z0-9._:-]{1,64}"
_ID = re.compile(_ID_CHARS)
_HEX = re.compile(r"[0-9a-f]{64}")
# All of a record's ids and hashes joined by "|", which no id may contain.
_RECORD_TEXT = re.compile(rf"(?:{_ID_CHARS}\|){{7}}[0-9a-f]{{64}}\|(?:[0-9a-f]{{64}})?")


def _text_ok(record: Record) -> bool:
    checksum = record.checksum if isinstance(record.checksum, str) else ""
    joined = "|".join(
        (
            record.device_id,
            record.journal_id,
            record.campaign_id,
            record.ad_group_id,
            record.content_id,
            record.store_id,
            record.supplier_id,
            checksum,
            record.screenshot_sha256 or "",
        )
    )
    return _RECORD_TEXT.fullmatch(joined) is not None


def _text_error(record: Record) -> str:
    for name in _ID_FIELDS:
        value = getattr(record, name)
        if not _ID.fullmatch(value):
            return f"Expected `str` of 1 to 64 of A-Z a-z 0-9 . _ : - at `$.{name}`, got {value!r}"
    for name in ("checksum", "screenshot_sha256"):
        value = getattr(record, name)
        if isinstance(value, str) and not _HEX.fullmatch(value):
            return f"Expected lowercase hex SHA-256 at `$.{name}`, got {value!r}"
    return "Object missing required field `checksum`"


_SIGNED_TEXT = re.compile(r"[0-9a-f]{16}\|[0-9a-f]{128}")


def check_record(record: Record) -> Record:
    """The record if its ids and hashes are well-formed, it is sealed and it carries
    exactly its version's fields, else RecordError."""
    if record.checksum is UNSET or not _text_ok(record):
        raise RecordError(f"invalid record: {_text_error(record)}")
    error = _version_error(record)
    if error:
        raise RecordError(f"invalid record: {error}")
    return record


def _version_error(record: Record) -> str:
    """What is wrong with the record's version-2 fields for its version ("" if nothing)."""
    if record.v == 1:
        if (
            record.sig is UNSET
            and record.key_id is UNSET
            and record.panel_state is UNSET
            and record.panel_source is UNSET
        ):
            return ""
        present = [name for name in SIGNED_FIELDS if getattr(record, name) is not UNSET]
        return f"expected no {', '.join(present)} in a version-1 record (they are version 2's)"
    missing = [name for name in SIGNED_FIELDS if getattr(record, name) is UNSET]
    if missing:
        return f"Object missing required field `{missing[0]}`"
    if not _SIGNED_TEXT.fullmatch(f"{record.key_id}|{record.sig}"):
        return (
            "expected key_id of 16 and sig of 128 lowercase hex digits, "
            f"got {record.key_id!r} and {record.sig!r}"
        )
    return ""


def is_signed(record: Record) -> bool:
    """Whether the record is version 2 (signed, with panel evidence)."""
    return record.v == SIGNED_VERSION


def check_id(value: str, where: str) -> str:
    """`value` if it is a protocol id, else EnvelopeError naming `where`."""
    if not _ID.fullmatch(value):
        raise EnvelopeError(
            f"Expected `str` of 1 to 64 of A-Z a-z 0-9 . _ : - at `$.{where}`, got {value!r}"
        )
    return value


def decode_record(raw: bytes) -> Record:
    """Decode one record strictly, or raise RecordError saying what is wrong."""
    try:
        record = _record_decoder.decode(raw)
    except _UNDECODABLE as exc:
        raise RecordError(f"invalid record: {exc}") from None
    return check_record(record)


def _invalid(raw: bytes, exc: RecordError) -> InvalidRecord:
    try:
        seq = _seq_decoder.decode(raw).seq
    except _UNDECODABLE:
        seq = None
    readable = isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= MAX_INT
    return InvalidRecord(raw=bytes(raw), error=str(exc), seq=seq if readable else None)


def _decode_item(raw: msgspec.Raw) -> Record | InvalidRecord:
    try:
        return decode_record(bytes(raw))
    except RecordError as exc:
        return _invalid(bytes(raw), exc)


def _check_size(count: int) -> None:
    if count > MAX_BATCH_RECORDS:
        raise TooLarge(f"expected at most {MAX_BATCH_RECORDS} records per batch, got {count}")


def _all_sealed(records: list[Record]) -> bool:
    return all(r.checksum is not UNSET and _text_ok(r) and not _version_error(r) for r in records)


def decode_batch(body: bytes) -> Batch:
    """Decode an HTTP batch body; raise EnvelopeError or TooLarge for the whole body."""
    return _decode_batch(body, _fast_envelope_decoder, _envelope_decoder)


def _decode_batch(
    body: bytes,
    # Decoders of _FastEnvelope / Envelope, or of their stream subclasses (with `id`).
    fast: msgspec.json.Decoder[Any],
    whole: msgspec.json.Decoder[Any],
) -> Batch:
    """One decoder for both transports: every record sealed and well-formed decodes in
    one pass; otherwise the records stay raw and are decoded one by one, so that one bad
    record spoils only itself."""
    try:
        quick = fast.decode(body)
    except _UNDECODABLE:
        pass
    else:
        _check_size(len(quick.impressions))
        if _all_sealed(quick.impressions):
            check_id(quick.device_id, "device_id")
            frame_id = getattr(quick, "id", None)
            return Batch(quick.device_id, quick.sent_at, list(quick.impressions), frame_id)
    env: Envelope = _decode_envelope(body, whole)
    check_id(env.device_id, "device_id")
    _check_size(len(env.impressions))
    items = [_decode_item(r) for r in env.impressions]
    return Batch(env.device_id, env.sent_at, items, getattr(env, "id", None))


def _decode_envelope(body: bytes, decoder: msgspec.json.Decoder[_E]) -> _E:
    try:
        return decoder.decode(body)
    except RecursionError:
        raise EnvelopeError("expected flat records, got JSON nested too deep to read") from None
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"expected UTF-8 JSON, got bytes that are not: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"expected a JSON envelope object: {exc}") from None
    except msgspec.ValidationError as exc:
        raise EnvelopeError(f"invalid envelope: {exc}") from None


def frame_head(text: bytes | str) -> tuple[int | None, bool]:
    """The frame's id (None where unreadable) and whether it is a status frame."""
    try:
        head = _head_decoder.decode(text)
    except _UNDECODABLE:
        return None, False
    fid = head.id
    valid_id = isinstance(fid, int) and not isinstance(fid, bool) and abs(fid) <= MAX_INT
    return (fid if valid_id else None), head.type == "status"


def decode_stream_batch(text: bytes) -> Batch:
    """Decode a stream frame carrying an envelope; raise EnvelopeError or TooLarge."""
    return _decode_batch(text, _fast_stream_decoder, _stream_decoder)


def decode_status(body: bytes) -> Status:
    """Decode a status message; unknown fields are ignored, known ones are checked."""
    try:
        status = _status_decoder.decode(body)
    except RecursionError:
        raise EnvelopeError("expected a flat status object, got JSON nested too deep") from None
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"expected UTF-8 JSON, got bytes that are not: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"expected a JSON status object: {exc}") from None
    except msgspec.ValidationError as exc:
        raise EnvelopeError(f"invalid status: {exc}") from None
    check_id(status.device_id, "device_id")
    if status.journal_id is not None:
        check_id(status.journal_id, "journal_id")
    return status


def record_json(record: Record) -> bytes:
    """The record as JSON, as it would travel (checksum included)."""
    return _encoder.encode(record)
