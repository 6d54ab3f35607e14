"""One simulated screen: the real device SDK on a simulated clock, living through its faults.

A screen plays its playlist through `Device.start` / `Play.end` (and
`Play.next_pass` for content loops), with plays skipped, interrupted or ended
in error by chance. Its raw wall clock is the simulated clock off by its skew,
and may be stepped mid-run; its network is cut for its offline windows (the
uplink's simulation switch); and at its crash times the player dies: its task
is cancelled, wherever it is, the device abandoned without ending anything, and
after the downtime it opens again on the same data folder, so the journal
closes the interrupted play as `device_restart` and the sequence resumes.
A screen planned to `capture` takes proof screenshots of what it shows through
a simulated display (`pictures.SimulatedCapture`); an item with a `banner` has
a second, short play layered on it (two contents on screen at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from playproof.device import Clock, Content, Device, DeviceConfig, Play, UplinkConfig
from playproof.device.backoff import wait_event
from playproof.device.clock import parse_server
from playproof.device.transport import HTTP, STREAM
from playproof.errors import JournalError, PlayproofError
from playproof.fleet.panels import SimulatedPanel
from playproof.fleet.pictures import SimulatedCapture
from playproof.fleet.plan import BANNER_OVERLAP_MS, FleetOptions, Item, ScreenPlan
from playproof.fleet.simclock import SimClock
from playproof.protocol import EndReason

log = logging.getLogger(__name__)

# The screen a log line is about: set in each screen's task, inherited by the SDK's.
CURRENT: ContextVar[str] = ContextVar("screen", default="-")


class ScreenFilter(logging.Filter):
    """Adds `screen` (the device id whose task logs) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Name the screen; keep the record."""
        record.screen = CURRENT.get()
        return True


# Real-time floors for the device's own timers when time runs fast: below them a
# simulated device would spend its time on timers rather than on plays.
MIN_CHECKPOINT_S = 0.25
MIN_STATUS_S = 5.0
MIN_BACKOFF_CAP_S = 2.0


class ScreenClock:
    """A screen's raw clocks: simulated time, off by its skew and any step someone made.

    Both clocks derive from one real monotonic reading. The SDK reads the wall
    clock and then the monotonic one to stamp an instant, and takes any
    disagreement between their progress for a step of the wall clock; at 600x
    a thread switch of a millisecond between two real readings would look like
    a 600 ms step. So every reading within one event-loop callback names the
    same real instant (read at the callback's first use), as a loop's cached
    time would, with the monotonic clock's resolution.
    """

    def __init__(self, sim: SimClock, skew_ms: int) -> None:
        self.sim = sim
        self.offset_s = skew_ms / 1000.0
        self._origin = (time.monotonic(), sim.now_ms() / 1000.0)
        self._paired: float | None = None

    def _now(self) -> float:
        """The real instant of the current event-loop callback (read at its first use)."""
        if self._paired is not None:
            return self._paired
        now = time.monotonic()
        with contextlib.suppress(RuntimeError):  # outside the loop: no pairing
            asyncio.get_running_loop().call_soon(self._unpair)
            self._paired = now
        return now

    def wall(self) -> float:
        """The raw wall clock, UTC epoch seconds."""
        origin_mono, origin_wall = self._origin
        return origin_wall + (self._now() - origin_mono) * self.sim.speed + self.offset_s

    def monotonic(self) -> float:
        """The monotonic clock, at the simulated speed."""
        return self._now() * self.sim.speed

    def _unpair(self) -> None:
        self._paired = None

    def step(self, by_ms: int) -> None:
        """Someone sets the wall clock: it jumps by `by_ms`."""
        self.offset_s += by_ms / 1000.0


@dataclass
class Context:
    """What every screen of a worker shares."""

    clock: SimClock
    server_url: str
    options: FleetOptions
    run_start_ms: int
    ntp_address: str | None = None
    on_round_trip: Callable[[float], None] | None = None


class Screen:
    """One simulated screen; `live` until told to stop, then `finish`."""

    def __init__(self, plan: ScreenPlan, token: str, ctx: Context) -> None:
        self.plan = plan
        self.token = token
        self.ctx = ctx
        self.rng = random.Random(plan.seed)
        self.raw = ScreenClock(ctx.clock, plan.skew_ms)
        self.device: Device | None = None
        self.offline = False
        self.showing: str | None = None  # the content on screen now (what a capture shows)
        self.started = False
        self.down = False
        self.failed: str | None = None
        self.recorded = 0
        self.unrecorded = 0
        self.crashes = 0
        self.cuts = 0
        self.steps = 0
        self.acks: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    # --- time -----------------------------------------------------------------

    def until(self, offset_ms: int) -> float:
        """Real seconds from now until `offset_ms` after the run's start."""
        clock = self.ctx.clock
        return max(0.0, clock.real_seconds(self.ctx.run_start_ms + offset_ms - clock.now_ms()))

    def seconds(self, sim_ms: float) -> float:
        """Real seconds that `sim_ms` simulated milliseconds take."""
        return self.ctx.clock.real_seconds(sim_ms)

    # --- life -----------------------------------------------------------------

    async def live(self, stop: asyncio.Event) -> None:
        """Start at its time, play, go offline, crash and restart as planned, until `stop`."""
        CURRENT.set(self.plan.device_id)
        try:
            await asyncio.gather(self._life(stop), self._network(stop), self._clock_step(stop))
        except PlayproofError as exc:
            self.failed = str(exc)
            log.error("screen %s stopped: %s", self.plan.device_id, exc)
        except Exception as exc:  # a bug of ours: the run must say so, not end "clean"
            self.failed = f"{type(exc).__name__}: {exc}"
            log.exception("screen %s stopped on an unexpected error", self.plan.device_id)

    async def _life(self, stop: asyncio.Event) -> None:
        if await wait_event(stop, self.until(self.plan.start_ms)):
            return
        crashes = list(self.plan.crashes)
        while True:
            device = self.device = await self._open()
            self.started = True
            crash = crashes.pop(0) if crashes else None
            if not await self._run(device, crash, stop):
                return
            await self._crash(device)
            assert crash is not None
            if await wait_event(stop, self.until(sum(crash))):
                return

    async def _run(
        self, device: Device, crash: tuple[int, int] | None, stop: asyncio.Event
    ) -> bool:
        """Play until `stop` (False) or the crash (True)."""
        player = asyncio.create_task(self._play_forever(device, stop))
        limit = None if crash is None else self.until(crash[0])
        await asyncio.wait({player}, timeout=limit)
        if player.done():
            player.result()
            return False
        player.cancel()  # the player dies wherever it is
        await asyncio.gather(player, return_exceptions=True)
        return True

    async def _crash(self, device: Device) -> None:
        self.device = None
        self.down = True
        self.crashes += 1
        self._fold(device)
        await device.abandon()

    async def _network(self, stop: asyncio.Event) -> None:
        for start, end in self.plan.offline:
            if await wait_event(stop, self.until(start)):
                return
            self.cuts += 1
            self._set_offline(True)
            if await wait_event(stop, self.until(end)):
                return
            self._set_offline(False)

    async def _clock_step(self, stop: asyncio.Event) -> None:
        if self.plan.step is None:
            return
        when, by = self.plan.step
        if not await wait_event(stop, self.until(when)):
            self.steps += 1
            self.raw.step(by)

    def _set_offline(self, offline: bool) -> None:
        self.offline = offline
        if self.device is not None and self.device.uplink is not None:
            self.device.uplink.set_offline(offline)

    # --- playing --------------------------------------------------------------

    async def _play_forever(self, device: Device, stop: asyncio.Event) -> None:
        for item in itertools.cycle(self.plan.playlist):
            if stop.is_set():
                return
            await self._play(device, item, stop)

    async def _play(self, device: Device, item: Item, stop: asyncio.Event) -> None:
        self.showing = item.content_id
        try:
            if item.banner is None:
                await self._play_one(device, item, stop)
            else:
                await self._layered(device, item, item.banner, stop)
        finally:
            self.showing = None

    async def _layered(self, device: Device, item: Item, banner: Item, stop: asyncio.Event) -> None:
        """The item, and a banner on top of its end that stays up until the item is done.

        The banner always ends after the item under it: the SDK's stream delivers in
        sequence order from a cursor, so a later play sealed before an earlier one
        would wait for the next connection (a finding, reported, not worked around
        beyond this).
        """
        under_done = asyncio.Event()

        async def under() -> None:
            try:
                await self._play_one(device, item, stop)
            finally:
                under_done.set()

        async def over() -> None:
            start_ms = max(0, item.duration_ms - BANNER_OVERLAP_MS)
            if not await wait_event(stop, self.seconds(start_ms)):
                await self._play_one(device, banner, stop, hold=under_done)

        await asyncio.gather(under(), over())

    async def _play_one(
        self, device: Device, item: Item, stop: asyncio.Event, hold: asyncio.Event | None = None
    ) -> None:
        """One play; with `hold`, it does not end before that event is set."""
        content = Content(
            campaign_id=item.campaign_id,
            ad_group_id=item.ad_group_id,
            content_id=item.content_id,
            supplier_id=item.supplier_id,
            expected_ms=item.duration_ms,
        )
        try:
            play = await device.start(content)
        except JournalError as exc:
            self.unrecorded += 1
            log.error("NOT RECORDED: play on %s: %s", self.plan.device_id, exc)
            await wait_event(stop, self.seconds(item.duration_ms))
            return
        if item.passes > 1:
            await self._loop(play, item, stop)
            return
        reason, share = self._fate()
        if await wait_event(stop, self.seconds(item.duration_ms * share)):
            reason = "interrupted"
        if hold is not None:
            await hold.wait()
        await self._end(play, reason)

    async def _loop(self, play: Play, item: Item, stop: asyncio.Event) -> None:
        # By hand rather than `device.loop`: a crash must leave the pass open.
        for n in range(item.passes):
            if await wait_event(stop, self.seconds(item.duration_ms)):
                await self._end(play, "interrupted")
                return
            if n == item.passes - 1:
                await self._end(play, "completed")
            else:
                play = await play.next_pass()
                self.recorded += 1

    async def _end(self, play: Play, reason: EndReason) -> None:
        await play.end(reason)
        self.recorded += 1

    def _fate(self) -> tuple[EndReason, float]:
        """How this play ends and at what share of its length."""
        faults = self.ctx.options.faults
        chances: tuple[tuple[EndReason, float], ...] = (
            ("skipped", faults.skip),
            ("interrupted", faults.interrupt),
            ("error", faults.error),
        )
        draw = self.rng.random()
        for reason, chance in chances:
            if draw < chance:
                return reason, self.rng.uniform(0.1, 0.9)
            draw -= chance
        return "completed", 1.0

    # --- the device -----------------------------------------------------------

    async def _open(self) -> Device:
        device = await Device.open(
            self._config(),
            capture=self._capture(),
            clock=self._clock(),
            rng=self.rng,
            panel=SimulatedPanel(self.plan.panel_off, self._run_ms),
        )
        self.down = False
        self.recorded += len(device.recovered)
        if device.uplink is not None:
            device.uplink.on_round_trip = self.ctx.on_round_trip
            if self.offline:
                device.uplink.set_offline(True)
        return device

    def _run_ms(self) -> int:
        """Simulated milliseconds since the run started (what plans' times count)."""
        return self.ctx.clock.now_ms() - self.ctx.run_start_ms

    def _capture(self) -> SimulatedCapture | None:
        if not self.plan.capture:
            return None
        return SimulatedCapture(lambda: self.showing, self.raw.wall, dict(self.plan.wrong))

    def _config(self) -> DeviceConfig:
        speed = self.ctx.clock.speed
        options = self.ctx.options
        uplink = UplinkConfig(
            server_url=self.ctx.server_url,
            token=self.token,
            backoff_base_s=min(0.5, max(0.05, 0.5 / speed)),
            backoff_cap_s=min(5.0, max(MIN_BACKOFF_CAP_S, 5.0 / speed)),
            stream_retry_s=min(30.0, max(MIN_BACKOFF_CAP_S, 30.0 / speed)),
            status_interval_s=min(60.0, max(MIN_STATUS_S, 60.0 / speed)),
        )
        return DeviceConfig(
            device_id=self.plan.device_id,
            store_id=self.plan.store_id,
            data_dir=self.plan.data_dir,
            uplink=uplink,
            ntp_servers=(self.ctx.ntp_address,) if self.plan.ntp and self.ctx.ntp_address else (),
            capacity=options.capacity,
            checkpoint_s=max(MIN_CHECKPOINT_S, self.seconds(options.checkpoint_ms)),
            journal_synchronous="off" if options.fast_journals else "full",
        )

    def _clock(self) -> Clock:
        servers = (
            [parse_server(self.ctx.ntp_address)] if self.plan.ntp and self.ctx.ntp_address else []
        )
        return Clock(
            servers,
            wall=self.raw.wall,
            monotonic=self.raw.monotonic,
            # Resync within the hour of simulated time that keeps records synced.
            interval_s=max(0.5, self.seconds(15 * 60 * 1000)),
            timeout_s=2.0,
            rate=self.ctx.clock.speed,
        )

    def _fold(self, device: Device) -> None:
        """Keep what a device incarnation counted before it goes."""
        if device.uplink is not None:
            self.acks.update(device.uplink.results)
            self.rejected.update(device.uplink.rejected)

    # --- the end --------------------------------------------------------------

    async def finish(self, drain_s: float, abort: asyncio.Event) -> bool:
        """Network back, a crashed player restarted, delivery within `drain_s` (or until
        `abort`), then close; whether everything was delivered."""
        CURRENT.set(self.plan.device_id)
        self._set_offline(False)
        if self.device is None and self.started and self.failed is None:
            with contextlib.suppress(PlayproofError):
                self.device = await self._open()
        device = self.device
        if device is None:
            return True
        flushed = await _drain(device, drain_s, abort)
        await device.close(flush_timeout_s=0)
        self._fold(device)
        self.device = None  # with the fold, at once: the counts never dip
        return flushed

    # --- what it shows ----------------------------------------------------------

    def connected(self) -> bool:
        """Whether the device is delivering now (stream or HTTP)."""
        device = self.device
        return (
            device is not None
            and device.uplink is not None
            and device.uplink.state
            in (
                STREAM,
                HTTP,
            )
        )

    def queued(self) -> int:
        """Sealed records waiting for their ack now (0 while down)."""
        device = self.device
        if device is None:
            return 0
        return max(0, device.journal.size - device.recorder.open_plays)

    def tally(self) -> tuple[Counter[str], Counter[str]]:
        """Acks by result and rejects by reason, over every incarnation so far."""
        acks, rejected = Counter(self.acks), Counter(self.rejected)
        device = self.device
        if device is not None and device.uplink is not None:
            acks.update(device.uplink.results)
            rejected.update(device.uplink.rejected)
        return acks, rejected


async def _drain(device: Device, drain_s: float, abort: asyncio.Event) -> bool:
    """Let the device deliver what it holds, within `drain_s`, unless `abort` comes first."""
    if device.uplink is None:
        return True
    drained = asyncio.ensure_future(device.uplink.drain(drain_s))
    aborted = asyncio.ensure_future(abort.wait())
    await asyncio.wait({drained, aborted}, return_when=asyncio.FIRST_COMPLETED)
    aborted.cancel()
    if not drained.done():
        drained.cancel()
        await asyncio.gather(drained, return_exceptions=True)
        return False
    return drained.result()
