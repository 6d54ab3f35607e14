"""One small thread pool shared by every device in the process, for blocking work.

SQLite commits, screen captures and file writes block; they run here so that the
event loop never waits on a disk. The pool is shared on purpose: a fleet
simulator runs thousands of devices in one process, and a thread per device
would cost more than the work itself. Each journal serializes its own calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_inline = False


def run_inline(enabled: bool = True) -> None:
    """Simulations only: run blocking work on the calling thread, with no hop to the pool.

    A fleet simulator with non-durable journals (`synchronous="off"`: no fsync)
    saves the thread hops that otherwise dominate its CPU. A real device never
    should: every commit would block its event loop (docs/fleet.md).
    """
    global _inline
    _inline = enabled


def pool_size() -> int:
    """Threads in the shared pool: enough to overlap fsyncs, few enough to stay small."""
    return min(8, (os.cpu_count() or 1) + 2)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(pool_size(), thread_name_prefix="playproof-device")
        return _pool


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` on the shared pool and await its result without blocking the loop."""
    if _inline:
        return fn(*args, **kwargs)
    ctx = contextvars.copy_context()
    # Submitted directly rather than through loop.run_in_executor, which inspects
    # the callable each time (tens of µs: a fleet simulator makes thousands a second).
    call: Callable[[], T] = functools.partial(ctx.run, fn, *args, **kwargs)
    return await asyncio.wrap_future(_executor().submit(call))
