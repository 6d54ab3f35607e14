"""The player agent: plays a playlist in a loop through the SDK, headless.

It is the reference integration and what a fleet simulator runs by the
thousand: each item is one play, recorded with its real times. `speed`
divides every duration (a 15 s item plays 1.5 s at 10x and is recorded as a
1.5 s item), so the records stay honest. SIGTERM (or SIGINT) ends the current
play as `interrupted`, flushes what it can within a few seconds and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import signal
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from playproof.device.recorder import Content, Play
from playproof.device.sdk import DEFAULT_CAPTURE, CaptureChoice, Device, DeviceConfig
from playproof.errors import ConfigError, JournalError
from playproof.protocol import MAX_INT, EndReason, Id

log = logging.getLogger(__name__)


class PlaylistItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One entry of a playlist: what to play and for how long."""

    campaign_id: Id
    ad_group_id: Id
    content_id: Id
    supplier_id: Id
    duration_ms: Annotated[int, Meta(ge=1, le=MAX_INT)]
    skip_probability: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    # issue 16: the file `--renderer mpv` plays (relative to the playlist's folder);
    # the timer renderer ignores it, so old playlists and new ones both load.
    media: str | None = None


class Playlist(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The playlist file: `{"items": [...]}`, at least one item."""

    items: Annotated[list[PlaylistItem], Meta(min_length=1)]


_playlist_decoder = msgspec.json.Decoder(Playlist)


def load_playlist(path: Path) -> Playlist:
    """Read and strictly decode a playlist file; ConfigError says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read playlist {path}: {exc.strerror}") from None
    try:
        return _playlist_decoder.decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        raise ConfigError(f"playlist {path} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"playlist {path} is not JSON: {exc}") from None


class Player:
    """Plays items in order, forever or `max_plays` times, until `stop` is set."""

    def __init__(
        self, device: Device, playlist: Playlist, *, speed: float = 1.0, rng: random.Random
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"expected a speed above 0, got {speed}")
        self.device = device
        self.playlist = playlist
        self.speed = speed
        self.rng = rng
        self.plays = 0
        self.unrecorded = 0

    async def run(self, stop: asyncio.Event, max_plays: int | None = None) -> int:
        """Play until `stop` is set (or `max_plays` plays); how many plays were recorded."""
        for item in itertools.cycle(self.playlist.items):
            if stop.is_set() or (max_plays is not None and self.plays >= max_plays):
                break
            await self._play(item, stop)
            self.plays += 1
        return self.plays

    def content(self, item: PlaylistItem) -> Content:
        """The content as it plays at this speed: its scaled length is what is expected."""
        return Content(
            campaign_id=item.campaign_id,
            ad_group_id=item.ad_group_id,
            content_id=item.content_id,
            supplier_id=item.supplier_id,
            expected_ms=max(1, round(item.duration_ms / self.speed)),
        )

    async def _play(self, item: PlaylistItem, stop: asyncio.Event) -> None:
        content = self.content(item)
        skipped = self.rng.random() < item.skip_probability
        share = self.rng.uniform(0.1, 0.9) if skipped else 1.0
        seconds = content.expected_ms * share / 1000
        try:
            play = await self.device.start(content)
        except JournalError as exc:
            # The screen plays on; this play is not on record, and that is said loudly.
            self.unrecorded += 1
            log.error("NOT RECORDED: play of %s: %s", content.content_id, exc)
            await _interrupted(stop, seconds)
            return
        log.info("play started seq=%d content=%s", play.seq, content.content_id)
        reason: EndReason = "skipped" if skipped else "completed"
        if await _interrupted(stop, seconds):
            reason = "interrupted"
        await self._end(play, reason)

    async def _end(self, play: Play, reason: EndReason) -> None:
        record = await play.end(reason)
        log.info("play ended seq=%d %s %d ms", record.seq, reason, record.duration_ms)


async def _interrupted(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; whether it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def require_full_sync(mode: str) -> None:
    """Refuse a journal that is not `synchronous=full`: a play must be on disk before it goes on.

    A real screen that loses power must not lose the plays it reported started;
    only a simulator may trade that away (`--fast-journals`, not through here).
    """
    if mode != "full":
        raise JournalError(
            f"the player keeps its journal with synchronous=full, got synchronous={mode}: "
            "a power cut would lose plays (fast journals are for the fleet simulator only)"
        )


async def run_player(
    config: DeviceConfig,
    playlist: Playlist,
    *,
    speed: float = 1.0,
    seed: int | None = None,
    capture: CaptureChoice = DEFAULT_CAPTURE,
    flush_timeout_s: float = 3.0,
    max_plays: int | None = None,
) -> int:
    """Open the device, play until SIGTERM/SIGINT (or `max_plays`), flush and close."""
    if not speed > 0:
        raise ConfigError(f"expected a speed above 0, got {speed}")
    require_full_sync(config.journal_synchronous)
    stop = asyncio.Event()
    _on_signals(stop)
    rng = random.Random(seed)
    device = await Device.open(config, capture=capture, rng=rng)
    try:
        # What the connection really does, not what was asked of it.
        require_full_sync(device.journal.synchronous)
    except JournalError:
        await device.close(flush_timeout_s=0)
        raise
    health = device.health()
    log.info(
        "player running: device %s journal %s next seq %d key %s (%s) panel %s",
        config.device_id,
        device.journal.journal_id,
        device.journal.last_seq + 1,
        health.get("key_id", "-"),
        health["key_state"],
        health["panel_source"],
    )
    player = Player(device, playlist, speed=speed, rng=rng)
    try:
        await player.run(stop, max_plays)
    finally:
        flushed = await device.close(flush_timeout_s)
        left = "everything delivered" if flushed else "the rest stays in the journal"
        log.info("player stopped after %d play(s); %s", player.plays, left)
    return player.plays
