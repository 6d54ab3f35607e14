"""Retry timing: the policy as a pure function (hypothesis), Retry-After, failure kinds."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.device.backoff import RETRY_AFTER_SPREAD, Backoff, retry_delay
from playproof.device.stream import refusal
from playproof.device.transport import (
    BadCredentials,
    Refused,
    RetryLater,
    UplinkConfig,
    classify,
    reply_decoder,
    retry_after,
)
from playproof.errors import DeviceError

FAILURES = st.integers(0, 200)
JITTER = st.floats(0, 1, exclude_max=True)
BASE = st.floats(0.01, 10)
CAP = st.floats(0.01, 600)


@given(failures=FAILURES, jitter=JITTER, base=BASE, cap=CAP)
def test_without_retry_after_a_delay_is_full_jitter_under_the_growing_cap(
    failures: int, jitter: float, base: float, cap: float
) -> None:
    ceiling = min(cap, base * 2.0 ** min(failures, 32))
    delay = retry_delay(failures, jitter, base_s=base, cap_s=cap)
    assert 0 <= delay <= ceiling <= cap
    assert delay == pytest.approx(jitter * ceiling), "uniform over the whole window"


@given(failures=FAILURES, jitter=JITTER, base=BASE, cap=CAP, after=st.floats(0.001, 3600))
def test_a_retry_after_is_never_cut_short_and_is_spread_past_itself(
    failures: int, jitter: float, base: float, cap: float, after: float
) -> None:
    """Never sooner than asked; spread over at least half as long again, so that screens
    told the same Retry-After do not come back at the same instant."""
    delay = retry_delay(failures, jitter, base_s=base, cap_s=cap, retry_after_s=after)
    spread = max(min(cap, base * 2.0 ** min(failures, 32)), after * RETRY_AFTER_SPREAD)
    assert after <= delay <= after + spread
    assert delay == pytest.approx(after + jitter * spread)


@given(failures=FAILURES, after=st.floats(0.001, 3600), base=BASE, cap=CAP)
def test_jitter_spans_the_whole_window(
    failures: int, after: float, base: float, cap: float
) -> None:
    """The lowest and highest draws give the window's two ends: a fleet spreads over all of it."""
    kw = {"base_s": base, "cap_s": cap}
    ceiling = min(cap, base * 2.0 ** min(failures, 32))
    assert retry_delay(failures, 0.0, **kw) == 0.0
    assert retry_delay(failures, 1 - 1e-12, **kw) == pytest.approx(ceiling)
    assert retry_delay(failures, 0.0, retry_after_s=after, **kw) == after
    assert retry_delay(failures, 1 - 1e-12, retry_after_s=after, **kw) == pytest.approx(
        after + max(ceiling, after * RETRY_AFTER_SPREAD)
    )


def test_by_default_a_screen_retries_within_five_seconds_however_long_the_outage() -> None:
    """Network restored, send soon: the default cap is 5 s, not the 60 s it was."""
    config = UplinkConfig(server_url="http://x", token="t")
    assert config.backoff_cap_s == 5.0
    backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, random.Random(7))
    delays = [backoff.next_delay() for _ in range(1000)]
    assert max(delays) <= 5.0
    assert max(delays[-100:]) > 4.0, "the window is the whole 5 s once the cap is reached"


def test_delays_grow_then_reset_after_a_success() -> None:
    backoff = Backoff(0.5, 60, random.Random(1))
    for _ in range(10):
        backoff.next_delay()
    assert min(60, 0.5 * 2**backoff.failures) == 60
    backoff.reset()
    assert backoff.next_delay() <= 0.5, "back to the base after a reset"
    assert backoff.next_delay(retry_after_s=7) >= 7


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": "what the service said"})


def test_retry_after_as_seconds_or_a_date() -> None:
    assert retry_after(response(503, **{"Retry-After": "7"})) == 7
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after(response(429, **{"Retry-After": later})) <= 30
    assert retry_after(response(503)) == 0
    assert retry_after(response(503, **{"Retry-After": "soon"})) == 0


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, BadCredentials), (403, BadCredentials), (429, RetryLater), (503, RetryLater),
     (500, RetryLater), (400, Refused), (413, Refused), (415, Refused)],
)  # fmt: skip
def test_each_http_answer_is_classed(status: int, kind: type[DeviceError]) -> None:
    with pytest.raises(kind, match="what the service said"):
        classify(response(status, **{"Retry-After": "3"}), "batch upload")
    classify(response(200), "batch upload")


def test_a_429_carries_its_retry_after() -> None:
    with pytest.raises(RetryLater) as caught:
        classify(response(429, **{"Retry-After": "12"}), "batch upload")
    assert caught.value.after_s == 12


def test_uplink_settings_are_checked() -> None:
    with pytest.raises(DeviceError, match="server URL"):
        UplinkConfig(server_url="ftp://x", token="t")
    with pytest.raises(DeviceError, match="transports"):
        UplinkConfig(server_url="http://x", token="t", transports=("pigeon",))
    config = UplinkConfig(server_url="https://ingest.example/", token="t")
    assert config.stream_url == "wss://ingest.example/v1/stream"


@given(error=st.text(max_size=40), after_ms=st.integers(0, 10**7))
def test_a_stream_error_with_retry_after_ms_is_sent_again_after_it_whatever_its_words(
    error: str, after_ms: int
) -> None:
    """PROTOCOL.md section 3: `retry_after_ms` says "again, unchanged, at least this late"."""
    reply = reply_decoder.decode(
        json.dumps({"id": 3, "error": error, "retry_after_ms": after_ms}).encode()
    )
    assert reply.error is not None and reply.retry_after_ms is not None
    failure = refusal(reply.error, reply.retry_after_ms)
    assert isinstance(failure, RetryLater) and failure.after_s == after_ms / 1000


def test_a_stream_error_without_retry_after_ms_is_a_refused_frame() -> None:
    assert isinstance(refusal("frame 3: impressions must be a list", None), Refused)
