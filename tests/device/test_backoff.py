"""Retry timing: exponential backoff with full jitter, Retry-After, and failure kinds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.device.backoff import Backoff
from playproof.device.transport import (
    BadCredentials,
    Refused,
    RetryLater,
    UplinkConfig,
    classify,
    retry_after,
)
from playproof.errors import DeviceError


@given(
    base=st.floats(0.01, 10),
    cap=st.floats(0.01, 600),
    failures=st.integers(0, 80),
    at_least=st.floats(0, 1000),
    seed=st.integers(0, 2**32),
)
def test_each_delay_is_full_jitter_under_the_cap_and_never_under_retry_after(
    base: float, cap: float, failures: int, at_least: float, seed: int
) -> None:
    backoff = Backoff(base, cap, random.Random(seed))
    for _ in range(failures):
        backoff.next_delay()
    ceiling = min(cap, base * 2 ** min(failures, 32))
    delay = backoff.next_delay(at_least)
    assert delay >= at_least
    assert delay <= max(at_least, ceiling)


def test_delays_grow_then_reset_after_a_success() -> None:
    backoff = Backoff(0.5, 60, random.Random(1))
    ceilings = []
    for _ in range(10):
        backoff.next_delay()
        ceilings.append(min(60, 0.5 * 2**backoff.failures))
    assert ceilings[-1] == 60
    backoff.reset()
    assert backoff.next_delay() <= 0.5, "back to the base after a reset"


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
