"""What both transports share: settings, envelopes, answers, and how a failure is classed.

A failure is one of four kinds, and each has its own wait: the network or the
service is down (`TransportDown`: exponential backoff with full jitter), the
service asks for patience (`RetryLater`: at least its Retry-After), the
credentials are bad (`BadCredentials`: a long wait, it will not heal by
itself), or the service refuses a request for good (`Refused`: a 4xx, logged
and surfaced, retried slowly, never in a hot loop).
"""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
from dataclasses import dataclass
from typing import Final

import httpx
import msgspec

from playproof import __version__
from playproof.device.journal import Pending
from playproof.errors import DeviceError
from playproof.protocol import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, encode

# Room left in a 1 MiB batch for the envelope around the records.
ENVELOPE_ROOM: Final = 1024
STREAM: Final = "stream"
HTTP: Final = "http"


@dataclass(frozen=True, kw_only=True)
class UplinkConfig:
    """How a device reaches the service; the defaults suit a screen on a shop's network."""

    server_url: str
    token: str
    transports: tuple[str, ...] = (STREAM, HTTP)
    batch_records: int = MAX_BATCH_RECORDS
    batch_bytes: int = MAX_BATCH_BYTES - ENVELOPE_ROOM
    frames_in_flight: int = 4
    ack_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    gzip: bool = True
    backoff_base_s: float = 0.5
    # Low, so that a screen sends within seconds of the service answering again
    # (jittered: a fleet does not come back in step; Retry-After slows it down).
    backoff_cap_s: float = 5.0
    auth_backoff_s: float = 300.0
    refused_backoff_s: float = 120.0
    # A key registration refused (403, 409, 400) is tried again this rarely (jittered).
    key_retry_s: float = 300.0
    stream_retry_s: float = 30.0
    status_interval_s: float = 60.0
    version: str = __version__

    def __post_init__(self) -> None:
        """Refuse settings that cannot work, with what was expected."""
        if not self.server_url.startswith(("http://", "https://")):
            raise DeviceError(
                f"expected the server URL as http(s)://host:port, got {self.server_url!r}"
            )
        unknown = set(self.transports) - {STREAM, HTTP}
        if unknown or not self.transports:
            raise DeviceError(f"expected transports among stream and http, got {self.transports}")
        if not 1 <= self.batch_records <= MAX_BATCH_RECORDS:
            raise DeviceError(
                f"expected 1..{MAX_BATCH_RECORDS} records per batch, got {self.batch_records}"
            )
        if self.frames_in_flight < 1:
            raise DeviceError(f"expected at least 1 frame in flight, got {self.frames_in_flight}")

    @property
    def stream_url(self) -> str:
        """The WebSocket URL of the stream."""
        return "ws" + self.server_url.rstrip("/").removeprefix("http") + "/v1/stream"


class TransportDown(DeviceError):
    """The service could not be reached or did not answer: send again later."""


class RetryLater(DeviceError):
    """The service asked to come back later (429, 503), after at least `after_s`."""

    def __init__(self, message: str, after_s: float = 0.0) -> None:
        super().__init__(message)
        self.after_s = after_s


class BadCredentials(DeviceError):
    """The token is unknown (401, close 4401) or revoked (403, close 4403)."""


class Refused(DeviceError):
    """The service refused a whole request for good (a 4xx other than 401, 403, 429)."""


class AckView(msgspec.Struct):
    """An ack as the device reads it: leniently, so that a reject reason or flag the
    service adds later never makes a whole answer undecodable."""

    seq: int | None
    result: str
    status: str | None = None
    quality: int | None = None
    flags: list[str] = []
    reason: str | None = None


FINAL_RESULTS: Final = frozenset({"accepted", "duplicate", "rejected"})


class Reply(msgspec.Struct):
    """A stream frame's answer: an ack (`acks`) or an error (`error`)."""

    id: int | None = None
    error: str | None = None
    # PROTOCOL.md section 3: set on an error when the frame is fine, just not now.
    retry_after_ms: int | None = None
    received_at: int | None = None
    skew_ms: int | None = None
    acks: list[AckView] = []


class AckBody(msgspec.Struct):
    """An HTTP batch's answer."""

    received_at: int
    skew_ms: int
    acks: list[AckView]


reply_decoder: Final = msgspec.json.Decoder(Reply)
ack_decoder: Final = msgspec.json.Decoder(AckBody)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every device in the process: building one costs tens of ms."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def envelope(device_id: str, sent_at: int, rows: list[Pending], frame_id: int | None) -> bytes:
    """The batch envelope around already-encoded records; a stream frame carries its id."""
    head = b"{" if frame_id is None else b'{"id":%d,' % frame_id
    return b"".join(
        [
            head,
            b'"device_id":',
            encode(device_id),
            b',"sent_at":%d,"impressions":[' % sent_at,
            b",".join(row.body for row in rows),
            b"]}",
        ]
    )


def retry_after(response: httpx.Response) -> float:
    """Seconds a Retry-After header asks for (delta or HTTP date), 0 when absent."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def classify(response: httpx.Response, what: str) -> None:
    """Raise the failure kind an HTTP answer means; return quietly on success."""
    code = response.status_code
    if code < 300:
        return
    message = f"{what}: HTTP {code}: {_detail(response)}"
    if code in (401, 403):
        raise BadCredentials(message)
    if code in (429, 503) or code >= 500:
        raise RetryLater(message, retry_after(response))
    raise Refused(message)


def _detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else response.text[:200] or response.reason_phrase
