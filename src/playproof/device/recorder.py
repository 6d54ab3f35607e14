"""Recording plays: one call when content starts, one when it ends.

`Recorder.start` writes the play to the journal (sequence allocated and
persisted in one transaction) before it returns; while it plays, progress is
checkpointed every few seconds, so that a crash leaves a `device_restart`
record with the duration up to the last checkpoint; `Play.end` seals the record
and hands it to delivery: version 2 (signed, with the worst panel state observed)
once the device key is acknowledged, version 1 until then (keys.py, panel.py).

Times: `duration_ms` is monotonic. `start_ts` is the corrected wall clock at
the start. `end_ts` uses the same offset as `start_ts` (the record's
`clock_offset_ms`), so an NTP correction mid-play does not stretch the play;
and when the wall clock stepped during the play (or would end it before it
began), `end_ts = start_ts + duration_ms`, so that `start_ts <= end_ts` always.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta

from playproof.device.backoff import wait_event
from playproof.device.clock import Clock, Stamp
from playproof.device.journal import Journal, seal_v1
from playproof.device.keys import DeviceKey
from playproof.device.panel import PanelMonitor, PlayPanel
from playproof.device.screenshot import CaptureSource, ScreenshotStore, screenshot_moment
from playproof.errors import DeviceError, JournalError, RecordError
from playproof.protocol import (
    MAX_INT,
    EndReason,
    Id,
    Record,
    decode_record,
    record_json,
    seal,
)

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_S = 5.0
# How long the end of a play waits for a capture already under way.
CAPTURE_GRACE_S = 1.0


class Content(msgspec.Struct, frozen=True, kw_only=True):
    """What plays: the billing ids and the scheduled length."""

    campaign_id: Id
    ad_group_id: Id
    content_id: Id
    supplier_id: Id
    expected_ms: Annotated[int, Meta(ge=1, le=MAX_INT)]


def _nothing() -> None:
    return None


class Recorder:
    """Turns plays into journal records for one device."""

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        *,
        store_id: str,
        checkpoint_s: float = DEFAULT_CHECKPOINT_S,
        capture: CaptureSource | None = None,
        shots: ScreenshotStore | None = None,
        rng: random.Random | None = None,
        key: DeviceKey | None = None,
        panel: PanelMonitor | None = None,
    ) -> None:
        self.journal = journal
        # Signing (None: every play sealed version 1) and the panel's observer.
        self.key = key
        self.panel = panel
        self.clock = clock
        self.store_id = store_id
        self.checkpoint_s = checkpoint_s
        self.capture = capture if shots is not None else None
        self.shots = shots
        self.rng = rng or random.Random()
        self.on_record: Callable[[], None] = _nothing
        self.on_screenshot: Callable[[], None] = _nothing
        self._open: set[Play] = set()
        self._unsaved: list[Record] = []

    async def start(self, content: Content, at: Stamp | None = None) -> Play:
        """Record that `content` starts now; durable before this returns."""
        await self._retry_unsaved()
        stamp = at or self.clock.stamp()
        # The panel is read in the background: the start is journaled without waiting.
        panel = PlayPanel(self.panel) if self.panel is not None else None
        try:
            record = await self.journal.begin(self._opening(content, stamp))
        except BaseException:
            if panel is not None:
                panel.close()
            raise
        play = Play(self, content, record, stamp, panel)
        self._open.add(play)
        return play

    def seal(self, record: Record) -> Record:
        """Seal a finished record: version 2 with an acknowledged key, else version 1."""
        return self.key.seal(record) if self.key is not None else seal_v1(record)

    def sealing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Around a seal and its store: waits (bounded) while the key is being registered."""
        return self.key.gate.sealing() if self.key is not None else contextlib.nullcontext()

    def soonest_end_s(self) -> float | None:
        """Seconds until the first open play is due to end (None with none open)."""
        if not self._open:
            return None
        due = min(p.content.expected_ms - p.elapsed_ms() for p in self._open)
        return due / 1000 / self.clock.rate

    @property
    def unsaved_unsigned(self) -> int:
        """Version-1 records sealed and not yet stored (a full disk): not yet delivered."""
        return sum(1 for r in self._unsaved if r.v == 1)

    def _opening(self, content: Content, stamp: Stamp) -> Record:
        """The provisional record of a play just started: what a crash now would leave."""
        record = Record(
            v=1,
            device_id=self.journal.device_id,
            journal_id=self.journal.journal_id,
            seq=self.journal.last_seq + 1,
            campaign_id=content.campaign_id,
            ad_group_id=content.ad_group_id,
            content_id=content.content_id,
            store_id=self.store_id,
            supplier_id=content.supplier_id,
            start_ts=stamp.ts_ms,
            end_ts=stamp.ts_ms,
            duration_ms=0,
            expected_ms=content.expected_ms,
            end_reason="device_restart",
            clock_offset_ms=stamp.offset_ms,
            clock_synced=stamp.synced,
            screenshot_sha256=None,
            screenshot_at_ms=None,
        )
        return _validated(record)

    @contextlib.asynccontextmanager
    async def play(self, content: Content) -> AsyncIterator[Play]:
        """`async with recorder.play(c) as p:` ends `completed`, `error` if the body raises."""
        play = await self.start(content)
        try:
            yield play
        except asyncio.CancelledError:
            await play.end_if_open("interrupted")
            raise
        except BaseException:
            await play.end_if_open("error")
            raise
        await play.end_if_open("completed")

    @contextlib.asynccontextmanager
    async def loop(self, content: Content) -> AsyncIterator[Loop]:
        """A content loop: one record per pass (`await loop.next_pass()`), as `play` ends."""
        looping = Loop(await self.start(content))
        try:
            yield looping
        except asyncio.CancelledError:
            await looping.current.end_if_open("interrupted")
            raise
        except BaseException:
            await looping.current.end_if_open("error")
            raise
        await looping.current.end_if_open("completed")

    async def interrupt_all(self) -> list[Record]:
        """End every open play as `interrupted` (shutdown)."""
        return [await p.end("interrupted") for p in sorted(self._open, key=lambda p: p.seq)]

    def abandon(self) -> None:
        """Forget open plays without ending them, as a crash would (simulation)."""
        for play in self._open:
            for task in play._tasks:
                task.cancel()
            if play._panel_task is not None:
                play._panel_task.cancel()
            if play._panel is not None:
                play._panel.close()
        self._open.clear()
        self._unsaved.clear()

    @property
    def open_plays(self) -> int:
        """How many plays have started and not ended."""
        return len(self._open)

    async def _closed(self, play: Play, record: Record) -> None:
        self._open.discard(play)
        try:
            await self.journal.close(record)
        except JournalError as exc:
            # The play's last checkpoint is on disk: a crash now still leaves a
            # device_restart record. Keep the sealed record and try again.
            log.error("could not store the end of play %d, will retry: %s", record.seq, exc)
            self._unsaved.append(record)
            return
        self.on_record()

    async def _retry_unsaved(self) -> None:
        while self._unsaved:
            await self.journal.close(self._unsaved[0])
            self._unsaved.pop(0)
            self.on_record()


class Play:
    """A play under way; end it once with `end`."""

    def __init__(
        self,
        recorder: Recorder,
        content: Content,
        record: Record,
        start: Stamp,
        panel: PlayPanel | None = None,
    ) -> None:
        self._recorder = recorder
        self._panel = panel
        self.content = content
        self._record = record
        self._start = start
        self._ended = asyncio.Event()
        self._lock = asyncio.Lock()
        self._shot: tuple[str, int] | None = None
        self._capturing = False
        self._tasks = [asyncio.create_task(self._checkpoints())]
        moment = self._moment()
        if moment is not None:
            self._tasks.append(asyncio.create_task(self._screenshot(moment)))
        # With no screenshot moment the panel is observed mid-play instead. Kept
        # apart from `_tasks`, whose tail is the scheduled capture.
        self._panel_task: asyncio.Task[None] | None = None
        if panel is not None and moment is None:
            self._panel_task = asyncio.create_task(self._observe_panel(content.expected_ms // 2))

    def __repr__(self) -> str:
        """The play's sequence and content."""
        return f"<Play seq={self.seq} content={self.content.content_id}>"

    @property
    def seq(self) -> int:
        """The play's sequence number."""
        return self._record.seq

    @property
    def start_ts(self) -> int:
        """When the play started, corrected UTC ms."""
        return self._record.start_ts

    @property
    def ended(self) -> bool:
        """Whether `end` has been called."""
        return self._ended.is_set()

    def elapsed_ms(self, stamp: Stamp | None = None) -> int:
        """Monotonic milliseconds since the start."""
        now = stamp.mono if stamp else self._recorder.clock.stamp().mono
        return max(0, int((now - self._start.mono) * 1000))

    async def end(self, reason: EndReason = "completed", at: Stamp | None = None) -> Record:
        """Record that the play ended for `reason`; return the sealed record."""
        if self.ended:
            raise DeviceError(f"play {self.seq} has already ended")
        stamp = at or self._recorder.clock.stamp()
        self._ended.set()
        await self._settle_screenshot()
        if self._panel_task is not None:
            self._panel_task.cancel()
        async with self._lock:
            record = self._progress(stamp, reason)
            if self._panel is not None:
                record.panel_state = self._panel.at_end()
            async with self._recorder.sealing():
                record = self._recorder.seal(record)
                await self._recorder._closed(self, record)
        return record

    async def end_if_open(self, reason: EndReason) -> Record | None:
        """End the play unless it has ended already."""
        return None if self.ended else await self.end(reason)

    # --- issue 16: a screenshot handed in by the player (agent, mpv, kiosk) ---------
    async def attach_screenshot(self, png: bytes) -> str:
        """Keep `png` as this play's proof screenshot, taken now; a scheduled capture is dropped.

        For players whose frame is better than the screen's (off-screen rendering, a
        canvas): the picture counts from this moment, like a capture would.
        """
        shots = self._recorder.shots
        if shots is None:
            raise DeviceError("this device keeps no screenshots (opened with capture=None)")
        if self.ended:
            raise DeviceError(f"play {self.seq} has already ended")
        taken_at = self.elapsed_ms()
        sha = await shots.put(png)
        for task in self._tasks[1:]:  # [0] checkpoints; the rest is the scheduled capture
            task.cancel()
        self._shot = (sha, taken_at)
        self._recorder.on_screenshot()
        await self._checkpoint()
        return sha

    # --- end of issue 16 --------------------------------------------------------------

    async def next_pass(self) -> Play:
        """End this pass `completed` and start the next at the same instant."""
        stamp = self._recorder.clock.stamp()
        await self.end("completed", at=stamp)
        return await self._recorder.start(self.content, at=stamp)

    # --- progress -----------------------------------------------------------

    def _progress(self, stamp: Stamp, reason: EndReason) -> Record:
        duration = self.elapsed_ms(stamp)
        record = msgspec.structs.replace(
            self._record,
            end_ts=end_ts(self._start, stamp, duration),
            duration_ms=duration,
            end_reason=reason,
        )
        if self._shot is not None:
            record.screenshot_sha256, record.screenshot_at_ms = self._shot
        if self._panel is not None:
            # Checkpointed too: a crash keeps what was seen (recovery adds `unknown`).
            so_far = self._panel.so_far()
            record.panel_state = UNSET if so_far is None else so_far
            record.panel_source = self._panel.monitor.name
        return record

    async def _checkpoints(self) -> None:
        while not await wait_event(self._ended, self._recorder.checkpoint_s):
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        async with self._lock:
            if self.ended:
                return
            progress = self._progress(self._recorder.clock.stamp(), "device_restart")
            try:
                await self._recorder.journal.checkpoint(progress)
            except JournalError as exc:
                log.error("checkpoint of play %d failed: %s", self.seq, exc)

    # --- screenshot ---------------------------------------------------------

    def _moment(self) -> int | None:
        if self._recorder.capture is None:
            return None
        return screenshot_moment(self.content.expected_ms, self._recorder.rng)

    async def _screenshot(self, moment_ms: int) -> None:
        wait_s = (moment_ms - self.elapsed_ms()) / 1000 / self._recorder.clock.rate
        if await wait_event(self._ended, wait_s):
            return
        taken_at = self.elapsed_ms()
        self._capturing = True
        if self._panel is not None:
            self._panel.observe()
        sha = await self._take()
        if sha is None:
            return
        self._shot = (sha, taken_at)
        self._recorder.on_screenshot()
        await self._checkpoint()

    async def _observe_panel(self, moment_ms: int) -> None:
        wait_s = (moment_ms - self.elapsed_ms()) / 1000 / self._recorder.clock.rate
        if not await wait_event(self._ended, wait_s) and self._panel is not None:
            self._panel.observe()

    async def _take(self) -> str | None:
        capture, shots = self._recorder.capture, self._recorder.shots
        assert capture is not None and shots is not None
        try:
            png = await capture.capture()
            return None if png is None else await shots.put(png)
        except (OSError, ValueError) as exc:
            log.warning("screenshot of play %d not kept: %s", self.seq, exc)
            return None

    async def _settle_screenshot(self) -> None:
        """Let a capture already under way finish (briefly); a pending one is dropped."""
        for task in self._tasks:
            if task.done():
                continue
            if self._capturing and task is self._tasks[-1]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), CAPTURE_GRACE_S)
            if not task.done():
                task.cancel()


class Loop:
    """A content loop under way: `next_pass` closes a pass and opens the next."""

    def __init__(self, first: Play) -> None:
        self.current = first
        self.passes = 1

    async def next_pass(self) -> Play:
        """End the current pass `completed` and start the next."""
        self.current = await self.current.next_pass()
        self.passes += 1
        return self.current


def end_ts(start: Stamp, end: Stamp, duration_ms: int) -> int:
    """The play's end on the record's clock; see the module docstring for the rule."""
    if end.steps == start.steps:
        candidate = round(end.raw_ms + start.offset_ms)
        if candidate >= start.ts_ms:
            return candidate
    return start.ts_ms + duration_ms


def _validated(record: Record) -> Record:
    """The record, after the protocol's own checks (ids, ranges): fail before storing."""
    try:
        decode_record(record_json(seal(msgspec.structs.replace(record))))
    except RecordError as exc:
        raise DeviceError(f"cannot record this play: {exc}") from None
    return record
