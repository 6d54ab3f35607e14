"""`playproof load`: one loader process, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from playproof.errors import ConfigError
from playproof.pipeline.loader import Loader
from playproof.pipeline.settings import Settings, parse
from playproof.stores.base import Store


def parse_partitions(text: str | None, settings: Settings) -> list[int]:
    """`0,2` or `0-3` (or None: all) as partition numbers; ConfigError when out of range."""
    if text is None or not text.strip():
        return list(range(settings.partitions))
    found: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ConfigError(f"expected partitions such as 0,2 or 0-3, got {text!r}")
        found.update(range(int(first), int(last if sep else first) + 1))
    wrong = sorted(p for p in found if p >= settings.partitions)
    if wrong or not found:
        raise ConfigError(f"expected partitions in 0..{settings.partitions - 1}, got {text!r}")
    return sorted(found)


def _announce(loader: Loader) -> None:
    print(
        f"playproof loading partitions {loader.partitions} from {loader.settings.url}",
        file=sys.stderr,
        flush=True,
    )


async def run_loader(url: str, store: Store, partitions: str | None = None) -> None:
    """Open the store, load the partitions until a signal, finish the batch under way, close."""
    settings = parse(url)
    loader = Loader(settings, store, parse_partitions(partitions, settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loader.stop)
    await store.open()
    try:
        await loader.run(ready=lambda: _announce(loader))
    finally:
        await store.close()
