"""The device SDK in one object: journal, clock, recorder, screenshots and delivery.

```python
config = DeviceConfig(device_id="scr-1", store_id="store-1", data_dir=Path("/var/lib/pp"),
                      uplink=UplinkConfig(server_url="https://ingest", token=token))
async with await Device.open(config) as device:
    async with device.play(content) as play:
        await show(content)          # ends `completed`; `error` if this raises
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from playproof.device.clock import Clock, parse_server
from playproof.device.journal import DEFAULT_CAPACITY, DEFAULT_QUEUE_BYTES, JOURNAL_FILE, Journal
from playproof.device.keys import DeviceKey
from playproof.device.ledger import DEFAULT_RETENTION_MS
from playproof.device.panel import NoPanel, PanelConfig, PanelMonitor, PanelSource, make_source
from playproof.device.recorder import DEFAULT_CHECKPOINT_S, Content, Loop, Play, Recorder
from playproof.device.screenshot import (
    DEFAULT_MAX_BYTES,
    CaptureSource,
    ScreenshotStore,
    default_capture,
)
from playproof.device.transport import UplinkConfig
from playproof.device.uplink import Uplink, device_health
from playproof.protocol import Record
from playproof.rules import DEFAULT_POLICY, Policy

log = logging.getLogger(__name__)

SCREENSHOT_FOLDER: Final = "screenshots"


class _Default:
    """Marker: use the default capture source."""


DEFAULT_CAPTURE: Final = _Default()
# What `Device.open(capture=...)` takes: a source, None for no screenshots, or the default.
CaptureChoice = CaptureSource | _Default | None


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One screen's settings; `uplink=None` records without delivering."""

    device_id: str
    store_id: str
    data_dir: Path
    uplink: UplinkConfig | None = None
    ntp_servers: tuple[str, ...] = ()
    ntp_interval_s: float = 900.0
    ntp_timeout_s: float = 2.0
    # The journal keeps every play younger than `policy.offline_limit_ms` (4 h);
    # `capacity` bounds only the older ones, `journal_queue_bytes` all (eviction.py).
    capacity: int = DEFAULT_CAPACITY
    journal_queue_bytes: int = DEFAULT_QUEUE_BYTES
    journal_max_bytes: int | None = None
    checkpoint_s: float = DEFAULT_CHECKPOINT_S
    screenshot_max_bytes: int = DEFAULT_MAX_BYTES
    policy: Policy = DEFAULT_POLICY
    ledger_retention_ms: int = DEFAULT_RETENTION_MS
    # Simulations only ("off": commits not on disk when they return; see docs/fleet.md).
    journal_synchronous: str = "full"
    # Protocol version 2: a key in `data_dir` (made with the journal), registered with
    # the service; plays are signed once it is acknowledged (keys.py).
    signing: bool = True
    # The panel source (`--panel`): drm, cec, mdc or none, and its settings (panel.py).
    panel: str = "none"
    panel_options: PanelConfig = field(default_factory=PanelConfig)


class Device:
    """A screen's recording and delivery; open it with `Device.open`, close it once."""

    def __init__(
        self,
        config: DeviceConfig,
        journal: Journal,
        clock: Clock,
        recorder: Recorder,
        uplink: Uplink | None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock
        self.recorder = recorder
        self.uplink = uplink
        self.key = recorder.key
        self.panel = recorder.panel
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def open(
        cls,
        config: DeviceConfig,
        *,
        capture: CaptureChoice = DEFAULT_CAPTURE,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        panel: PanelSource | None = None,
    ) -> Device:
        """Open the journal (closing plays a crash left open), sync once, start delivery.

        `panel` takes a panel source of the player's own (a display vendor's API);
        without it `config.panel` names one.
        """
        rng = rng or random.Random()
        source = panel if panel is not None else make_source(config.panel, config.panel_options)
        key = None
        if config.signing:
            existed = (config.data_dir / JOURNAL_FILE).exists()
            key = await DeviceKey.open(config.data_dir, existed, source.name)
        journal = await Journal.open(
            config.data_dir,
            config.device_id,
            config.capacity,
            config.journal_max_bytes,
            config.ledger_retention_ms,
            synchronous=config.journal_synchronous,
            keep_ms=config.policy.offline_limit_ms,
            queue_max_bytes=config.journal_queue_bytes,
            reseal=key.seal_recovered if key is not None else None,
        )
        try:
            return await cls._assemble(config, journal, capture, clock, rng, key, source)
        except BaseException:
            await journal.aclose()
            raise

    @classmethod
    async def _assemble(
        cls,
        config: DeviceConfig,
        journal: Journal,
        capture: CaptureChoice,
        clock: Clock | None,
        rng: random.Random,
        key: DeviceKey | None,
        panel_source: PanelSource,
    ) -> Device:
        clock = clock or _clock(config)
        # `none` needs no observer: its state is always `unknown` (and a fleet
        # simulator saves a task per screen).
        monitor = None
        if not isinstance(panel_source, NoPanel):
            options = config.panel_options
            monitor = PanelMonitor(
                panel_source, timeout_s=options.timeout_s, interval_s=options.interval_s
            )
        source = default_capture() if isinstance(capture, _Default) else capture
        shots = await _shots(config, source)
        recorder = Recorder(
            journal,
            clock,
            store_id=config.store_id,
            checkpoint_s=config.checkpoint_s,
            capture=source,
            shots=shots,
            rng=rng,
            key=key,
            panel=monitor,
        )
        uplink = _uplink(config, journal, clock, shots, rng, recorder)
        device = cls(config, journal, clock, recorder, uplink)
        await device._start()
        return device

    async def _start(self) -> None:
        # One sync before the first play, so that it can already be clock_synced.
        await self.clock.sync()
        self._spawn(self.clock.run(sync_first=False))
        if self.panel is not None:
            self._spawn(self.panel.run())
        if self.uplink is not None:
            self.recorder.on_record = self.uplink.notify
            self.recorder.on_screenshot = self.uplink.notify_screenshot
            self.clock.on_change = self.uplink.notify_status
            self._spawn(self.uplink.run())
            # Before the first play: a new screen's key is acknowledged before it seals
            # anything, so that every play it records is signed (keys.Registrar.first).
            await self.uplink.register_first()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)

    # --- recording ----------------------------------------------------------

    async def start(self, content: Content) -> Play:
        """Record that `content` starts now (durable before this returns)."""
        return await self.recorder.start(content)

    def play(self, content: Content) -> AbstractAsyncContextManager[Play]:
        """`async with device.play(c) as p:` ends `completed`, or `error` if the body raises."""
        return self.recorder.play(content)

    def loop(self, content: Content) -> AbstractAsyncContextManager[Loop]:
        """A content loop: one record per pass."""
        return self.recorder.loop(content)

    @property
    def recovered(self) -> list[Record]:
        """Plays a crash had left open, closed at this start as `device_restart`."""
        return self.journal.recovered

    async def status(self) -> dict[str, Any]:
        """The status message this device would send now."""
        if self.uplink is None:
            stats = await self.journal.stats()
            return {"device_id": self.config.device_id, **stats._asdict(), **self.health()}
        message, _ = await self.uplink.status()
        return message

    def health(self) -> dict[str, Any]:
        """The key's id, registration state and alarm, and the panel's last state."""
        return device_health(self.key, self.panel)

    # --- closing ------------------------------------------------------------

    async def close(self, flush_timeout_s: float = 3.0) -> bool:
        """End open plays as `interrupted`, deliver what can be within the limit, close."""
        if self._closed:
            return True
        self._closed = True
        await self.recorder.interrupt_all()
        flushed = True
        if self.uplink is not None:
            flushed = await self.uplink.drain(flush_timeout_s)
            await self.uplink.settle_registration()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.uplink.send_status(), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.panel is not None:
            await self.panel.aclose()
        await self.journal.aclose()
        return flushed

    async def abandon(self) -> None:
        """Simulation only: stop as a crash would (nothing ended, nothing flushed).

        Connections are dropped, tasks cancelled and the journal file closed with
        its plays still open: the next `Device.open` on the same data folder closes
        them as `device_restart` and resumes the sequence.
        """
        if self._closed:
            return
        self._closed = True
        if self.uplink is not None:
            self.uplink.set_offline(True)
        self.recorder.abandon()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.panel is not None:
            await self.panel.aclose()
        await self.journal.aclose()

    async def __aenter__(self) -> Device:
        """The device itself."""
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the device (see `close`)."""
        await self.close()


def _clock(config: DeviceConfig) -> Clock:
    servers = [parse_server(s) for s in config.ntp_servers]
    return Clock(
        servers,
        policy=config.policy,
        interval_s=config.ntp_interval_s,
        timeout_s=config.ntp_timeout_s,
    )


async def _shots(config: DeviceConfig, source: CaptureSource | None) -> ScreenshotStore | None:
    if source is None:
        return None
    folder = config.data_dir / SCREENSHOT_FOLDER
    return await ScreenshotStore.open(folder, config.screenshot_max_bytes)


def _uplink(
    config: DeviceConfig,
    journal: Journal,
    clock: Clock,
    shots: ScreenshotStore | None,
    rng: random.Random,
    recorder: Recorder,
) -> Uplink | None:
    if config.uplink is None:
        return None
    return Uplink(
        config.uplink,
        journal,
        clock,
        shots=shots,
        policy=config.policy,
        rng=rng,
        key=recorder.key,
        panel=recorder.panel,
        unsaved_unsigned=lambda: recorder.unsaved_unsigned,
        soonest_end=recorder.soonest_end_s,
    )


def _report_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error("device task failed: %r", task.exception(), exc_info=task.exception())


@contextlib.asynccontextmanager
async def opened(config: DeviceConfig, **kwargs: Any) -> AsyncIterator[Device]:
    """`async with opened(config) as device:` opens, and closes even on error."""
    device = await Device.open(config, **kwargs)
    try:
        yield device
    finally:
        await device.close()
