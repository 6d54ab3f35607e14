"""How the device reads a stream frame's error: by `retry_after_ms`, never by its wording.

(tests/device/test_backoff.py shows an error with `retry_after_ms` sent again after it.)
"""

from __future__ import annotations

import pytest

from playproof.device.stream import refusal
from playproof.device.transport import Refused, reply_decoder


@pytest.mark.parametrize(
    "words", ["not committed, send again: the store is unavailable", "send again later"]
)
def test_an_error_without_retry_after_ms_means_the_frame_is_wrong_whatever_it_says(
    words: str,
) -> None:
    reply = reply_decoder.decode(b'{"id": 4, "error": "%s"}' % words.encode())
    assert reply.error is not None
    assert isinstance(refusal(reply.error, reply.retry_after_ms), Refused)
