"""The garbage collector, tuned for a service holding thousands of long-lived connections.

A full (generation-2) collection walks every tracked object: with 10,000 stream
connections that is about 2 million (some 200 a connection: uvicorn's protocol, the
WebSocket state, headers, the session and its task), and it paused the event loop for
0.1-2.3 s, several times a minute while connections opened and then whenever enough
survivors piled up (issue 17, `bench/stream.py --gc-log`). So every `FREEZE_EVERY_S`
whatever exists is frozen (`gc.freeze`, a constant-time move): it is freed by reference
counting as before, but a full collection no longer walks it.

What that costs is reference cycles among frozen objects: they stay until the next
thaw. So everything is thawed and collected once (one long pause) every
`THAW_EVERY_S`, and sooner once the process's resident memory has grown by
`THAW_GROWTH_BYTES` since the last thaw: a flood of connections opened and dropped
cannot pile up its garbage for an hour (measured, a connection and its frames leave
about one object in a cycle). Ramping up to 10,000 connections (130 to 430 MiB) then
costs one full collection (about 1 s here) instead of a dozen.

Growth is read from /proc/self/statm, not from `gc.get_freeze_count()`: that walks
the whole frozen list, and at 1,000 connections (190,000 objects) it took 18-22 ms,
a pause every second that was the stream's ack p99 (bench/stream.py, paced).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from typing import Final

FREEZE_EVERY_S: Final = 1.0
# Young collections a tenth as often as Python's default (700 allocations).
GC_YOUNG_THRESHOLD: Final = 7_000
THAW_EVERY_S: Final = 3600.0
THAW_GROWTH_BYTES: Final = 256 * 1024 * 1024


def resident_bytes() -> int:
    """This process's resident memory (Linux); 0 where /proc cannot tell."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


async def keep_frozen(
    every_s: float = FREEZE_EVERY_S,
    thaw_every_s: float = THAW_EVERY_S,
    thaw_growth: int = THAW_GROWTH_BYTES,
) -> None:
    """Freeze what exists every `every_s`; thaw and collect everything every
    `thaw_every_s`, or once resident memory has grown by `thaw_growth` bytes."""
    thawed_at = time.monotonic()
    base = resident_bytes()
    while True:
        await asyncio.sleep(every_s)
        grown = resident_bytes() - base
        if time.monotonic() - thawed_at >= thaw_every_s or grown >= thaw_growth:
            gc.unfreeze()
            gc.collect()
            thawed_at = time.monotonic()
            base = resident_bytes()
        gc.freeze()
