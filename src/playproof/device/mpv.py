"""mpv as the renderer: `playproof player --renderer mpv` drives a real mpv over JSON IPC.

mpv runs idle (`--idle`) with an IPC socket (`--input-ipc-server`); each playlist
item is a `loadfile`, and the play follows mpv's own events:

- it **starts** at the first `playback-restart` after `file-loaded`: mpv has no
  "first frame shown" event, and this one says decoding and output have begun;
- it **ends** at `end-file`, with its reason: `eof` is `completed` (the service's
  80 % rule still judges a file cut short, since a truncated file also ends in
  `eof`), our own skip is `skipped`, any other stop or quit is `interrupted`,
  `error` is `error`. A file mpv cannot open is an `error` play of no length,
  logged, and the loop goes on with the next item.

The proof screenshot is mpv's `screenshot-to-file` in `video` mode (the decoded
frame, without OSD or subtitles: the content, not the desktop), taken by the
recorder at its moment in 40-60 % of the play. Still images show for the item's
length through `image-display-duration`. mpv dying ends the open play
`interrupted`; the player starts a new mpv (a bounded number of times in a row).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from playproof.device.player import Playlist, PlaylistItem, require_full_sync
from playproof.device.recorder import Content, Play
from playproof.device.sdk import Device, DeviceConfig
from playproof.errors import ConfigError, JournalError, PlayproofError
from playproof.protocol import EndReason

log = logging.getLogger(__name__)

# mpv's options for a signage screen: no terminal, a window even before the first file,
# fullscreen, nothing drawn over the content.
BASE_ARGS: Final = (
    "--idle=yes",
    "--no-terminal",
    "--force-window=yes",
    "--keep-open=no",
    "--fullscreen",
    "--osd-level=0",
    "--no-input-default-bindings",
)
START_TIMEOUT_S: Final = 10.0
COMMAND_TIMEOUT_S: Final = 10.0
# How long a file may take from `loadfile` to its first frame before it counts as an error.
LOAD_TIMEOUT_S: Final = 30.0
# mpv restarts in a row (without a play completing between them) before the player gives up.
MAX_RESTARTS: Final = 5
# After a file mpv cannot open, before the next item.
ERROR_PAUSE_S: Final = 1.0
_DIED: Final = "_died"


class MpvError(PlayproofError):
    """mpv could not be started, or kept dying."""


class MpvDied(Exception):
    """The mpv process went away while we waited for it."""


class Mpv:
    """One mpv process and its JSON IPC connection: commands answered, events queued."""

    def __init__(self, folder: Path, extra_args: Sequence[str] = ()) -> None:
        self.socket = folder / "mpv.sock"
        self.extra_args = tuple(extra_args)
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return None if self.proc is None else self.proc.pid

    async def start(self) -> None:
        """Start mpv and connect to its socket; MpvError if either fails in time."""
        binary = shutil.which("mpv")
        if binary is None:
            raise MpvError("mpv not found: install it (apt-get install mpv)")
        self.socket.unlink(missing_ok=True)
        args = [*BASE_ARGS, f"--input-ipc-server={self.socket}", *self.extra_args]
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        reader = await self._connect()
        self._reader = asyncio.create_task(self._read(reader))
        log.info("mpv started pid=%d", self.proc.pid)

    async def _connect(self) -> asyncio.StreamReader:
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(str(self.socket))
                return reader
            except OSError as exc:
                if self.proc.returncode is not None:
                    raise MpvError(f"mpv exited with {self.proc.returncode} at start") from None
                if asyncio.get_running_loop().time() > deadline:
                    await self.kill()
                    raise MpvError(f"mpv's IPC socket did not answer: {exc}") from None
                await asyncio.sleep(0.05)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                future = self._pending.pop(message.get("request_id", 0), None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif "event" in message:
                    self.events.put_nowait(message)
        except (OSError, ValueError) as exc:
            log.warning("mpv's IPC connection failed: %s", exc)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MpvDied("mpv went away"))
        self._pending.clear()
        self.events.put_nowait({"event": _DIED})

    async def command(self, *args: Any) -> Any:
        """Run an mpv command; its `data`. MpvDied if mpv is gone, RuntimeError if it fails."""
        if self._writer is None or self._reader is None or self._reader.done():
            raise MpvDied("mpv is not running")
        request = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        line = json.dumps({"command": list(args), "request_id": request}) + "\n"
        try:
            self._writer.write(line.encode())
            await self._writer.drain()
            answer = await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise MpvDied(f"mpv did not answer {args[0]}: {exc!r}") from None
        finally:
            self._pending.pop(request, None)
        if answer.get("error") != "success":
            raise RuntimeError(f"mpv refused {args[0]}: {answer.get('error')}")
        return answer.get("data")

    async def kill(self) -> None:
        """Stop mpv (quit, then SIGKILL) and close the connection."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(MpvDied, RuntimeError):
                await self.command("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _die_with_parent() -> None:
    """mpv ends with the player, even a SIGKILLed one: no orphan keeps showing content."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class MpvCapture:
    """The proof screenshot: the frame mpv shows now (`screenshot-to-file`, video mode)."""

    def __init__(self, player: MpvPlayer) -> None:
        self.player = player

    async def capture(self) -> bytes | None:
        """PNG bytes of mpv's current video frame; None when nothing plays or mpv fails."""
        mpv = self.player.mpv
        if mpv is None:
            return None
        path = self.player.folder / f"shot-{next(_shots)}.png"
        try:
            await mpv.command("screenshot-to-file", str(path), "video")
            return await asyncio.to_thread(path.read_bytes)
        except (MpvDied, RuntimeError, OSError) as exc:
            log.warning("mpv screenshot failed: %s", exc)
            return None
        finally:
            path.unlink(missing_ok=True)


_shots = itertools.count(1)


class MpvPlayer:
    """Plays a playlist's media through mpv, one recorded play per item, in a loop."""

    def __init__(
        self,
        playlist: Playlist,
        base_dir: Path,
        *,
        rng: random.Random,
        mpv_args: Sequence[str] = (),
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        missing = [i for i, item in enumerate(playlist.items) if not item.media]
        if missing:
            raise ConfigError(f"expected a `media` path on every item for mpv, not on {missing}")
        self.playlist = playlist
        self.base_dir = base_dir
        self.rng = rng
        self.mpv_args = tuple(mpv_args)
        self.max_restarts = max_restarts
        self.folder = Path(tempfile.mkdtemp(prefix="playproof-mpv-"))  # short: a socket path
        self.mpv: Mpv | None = None
        self.device: Device | None = None
        self.plays = 0
        self._restarts = 0
        self._died = False

    async def run(self, device: Device, stop: asyncio.Event, max_plays: int | None = None) -> int:
        """Play until `stop` is set (or `max_plays` plays); how many plays were recorded."""
        self.device = device
        try:
            await self._restart()
            for item in itertools.cycle(self.playlist.items):
                if stop.is_set() or (max_plays is not None and self.plays >= max_plays):
                    break
                await self._play(item, stop)
        finally:
            if self.mpv is not None:
                await self.mpv.kill()
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.plays

    async def _restart(self) -> None:
        if self.mpv is not None:
            await self.mpv.kill()
            self._restarts += 1
            if self._restarts > self.max_restarts:
                raise MpvError(f"mpv died {self._restarts} times in a row: giving up")
            log.warning("mpv went away: starting it again (%d in a row)", self._restarts)
        self._died = False
        self.mpv = Mpv(self.folder, self.mpv_args)
        await self.mpv.start()

    def media(self, item: PlaylistItem) -> Path:
        """The item's file: an absolute path, or relative to the playlist's folder."""
        assert item.media is not None
        return self.base_dir / item.media

    async def _play(self, item: PlaylistItem, stop: asyncio.Event) -> None:
        mpv = self.mpv
        assert mpv is not None and self.device is not None
        content = Content(
            campaign_id=item.campaign_id,
            ad_group_id=item.ad_group_id,
            content_id=item.content_id,
            supplier_id=item.supplier_id,
            expected_ms=item.duration_ms,
        )
        try:
            await mpv.command("set_property", "image-display-duration", item.duration_ms / 1000)
            await mpv.command("loadfile", str(self.media(item)), "replace")
            started = await self._first_frame(mpv, stop)
        except MpvDied:
            started = _DIED
        if started == _DIED:
            await self._restart()
            return
        if started != "playing":
            if started.startswith("error"):
                await self._error_play(content, item, started)
                # A playlist of broken files must not fill the journal with error plays as
                # fast as the loop turns: the slot's pause before the next item.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ERROR_PAUSE_S)
            return
        play = await self._start(content)
        reason = await self._until_end(mpv, item, stop)
        if play is not None:
            record = await play.end(reason)
            log.info("play ended seq=%d %s %d ms", record.seq, reason, record.duration_ms)
        self.plays += 1
        if reason == "completed":
            self._restarts = 0
        if self._died:
            await self._restart()

    async def _first_frame(self, mpv: Mpv, stop: asyncio.Event) -> str:
        """ "playing" at the first frame; "error: why", "stopped" or _DIED otherwise."""
        loaded = False
        deadline = asyncio.get_running_loop().time() + LOAD_TIMEOUT_S
        while True:
            event = await _next_event(mpv, stop, deadline - asyncio.get_running_loop().time())
            kind = event.get("event")
            if kind == "file-loaded":
                loaded = True
            elif kind == "playback-restart" and loaded:
                return "playing"
            elif kind == "end-file" and event.get("reason") == "error":
                return f"error: {event.get('file_error', 'unknown error')}"
            elif kind == "end-file":
                return "stopped"
            elif kind == _DIED:
                return _DIED
            elif kind in ("_stop", "_timeout"):
                with contextlib.suppress(MpvDied, RuntimeError):
                    await mpv.command("stop")
                    # Consume that file's end-file, so the next item does not take it as its own.
                    while (await _next_event(mpv, None, COMMAND_TIMEOUT_S))["event"] not in (
                        "end-file",
                        "_timeout",
                        _DIED,
                    ):
                        pass
                return "error: no first frame in time" if kind == "_timeout" else "stopped"

    async def _until_end(self, mpv: Mpv, item: PlaylistItem, stop: asyncio.Event) -> EndReason:
        skip_at = None
        if self.rng.random() < item.skip_probability:
            skip_at = item.duration_ms * self.rng.uniform(0.1, 0.9) / 1000
        ours: EndReason | None = None
        while True:
            # Once we asked mpv to stop, only its end-file is awaited (stop stays set).
            if ours is None:
                event = await _next_event(mpv, stop, skip_at)
            else:
                event = await _next_event(mpv, None, COMMAND_TIMEOUT_S)
                if event.get("event") == "_timeout":
                    return ours  # mpv never said end-file: it is wedged, the play is over

            kind = event.get("event")
            if kind in ("_timeout", "_stop") and ours is None:
                ours = "skipped" if kind == "_timeout" else "interrupted"
                try:
                    await mpv.command("stop")
                except (MpvDied, RuntimeError):
                    return "interrupted"
            elif kind == "end-file":
                return _end_reason(event.get("reason"), ours, item)
            elif kind == _DIED:
                self._died = True  # _play starts a new mpv once the play is ended
                return "interrupted"

    async def _start(self, content: Content) -> Play | None:
        assert self.device is not None
        try:
            play = await self.device.start(content)
        except JournalError as exc:
            log.error("NOT RECORDED: play of %s: %s", content.content_id, exc)
            return None
        log.info("play started seq=%d content=%s", play.seq, content.content_id)
        return play

    async def _error_play(self, content: Content, item: PlaylistItem, why: str) -> None:
        log.error("mpv could not play %s (%s): %s", self.media(item), content.content_id, why)
        play = await self._start(content)
        if play is not None:
            record = await play.end("error")
            log.info("play ended seq=%d error %d ms", record.seq, record.duration_ms)
        self.plays += 1


def _end_reason(mpv_reason: Any, ours: EndReason | None, item: PlaylistItem) -> EndReason:
    if mpv_reason == "eof":
        return "completed"
    if mpv_reason == "error":
        log.error("mpv failed while playing %s", item.media)
        return "error"
    # "stop" after our own stop: our reason; a stop or quit from someone else: interrupted.
    return ours or "interrupted"


async def _next_event(
    mpv: Mpv, stop: asyncio.Event | None, within_s: float | None
) -> dict[str, Any]:
    """mpv's next event; {"event": "_stop"} when `stop` is set, "_timeout" past `within_s`."""
    if stop is not None and stop.is_set():
        return {"event": "_stop"}
    getting = asyncio.ensure_future(mpv.events.get())
    stopping = asyncio.ensure_future(stop.wait() if stop is not None else asyncio.Future())
    try:
        done, _ = await asyncio.wait(
            {getting, stopping},
            timeout=None if within_s is None else max(0.0, within_s),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        stopping.cancel()
        if not getting.done():
            getting.cancel()
    if getting in done:
        return getting.result()
    if stopping in done:
        return {"event": "_stop"}
    return {"event": "_timeout"}


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run_mpv_player(
    config: DeviceConfig,
    playlist: Playlist,
    base_dir: Path,
    *,
    seed: int | None = None,
    screenshots: bool = True,
    mpv_args: Sequence[str] = (),
    flush_timeout_s: float = 3.0,
    max_plays: int | None = None,
) -> int:
    """Open the device, play through mpv until SIGTERM/SIGINT (or `max_plays`), flush, close."""
    require_full_sync(config.journal_synchronous)
    stop = asyncio.Event()
    _on_signals(stop)
    rng = random.Random(seed)
    player = MpvPlayer(playlist, base_dir, rng=rng, mpv_args=mpv_args)
    capture = MpvCapture(player) if screenshots else None
    device = await Device.open(config, capture=capture, rng=rng)
    try:
        require_full_sync(device.journal.synchronous)
        log.info(
            "mpv player running: device %s journal %s next seq %d (pid %d)",
            config.device_id,
            device.journal.journal_id,
            device.journal.last_seq + 1,
            os.getpid(),
        )
        await player.run(device, stop, max_plays)
    finally:
        flushed = await device.close(flush_timeout_s)
        left = "everything delivered" if flushed else "the rest stays in the journal"
        log.info("player stopped after %d play(s); %s", player.plays, left)
    return player.plays
