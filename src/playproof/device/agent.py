"""The local agent: the device SDK behind a small HTTP API on loopback, for any player.

A player in any language records a play with two calls (`POST /plays`, then
`POST /plays/<id>/end`); the agent owns the journal, the clock, screenshots and
delivery, exactly as an embedded `Device` would. The routes are in
`agent_api.py`, who may call them in `agent_security.py`.

Plays the player forgets: each open play has a watchdog that ends it
`interrupted` after twice its expected length plus a grace (the player died or
lost track; the agent did not). The agent itself dying leaves the play open in
the journal, and the next start closes it as `device_restart`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import uvicorn

from playproof.device.player import require_full_sync
from playproof.device.recorder import Content, Play
from playproof.device.screenshot import PNG_MAGIC, CaptureSource, MssCapture
from playproof.device.sdk import CaptureChoice, Device, DeviceConfig
from playproof.errors import ConfigError, DeviceError, JournalError
from playproof.protocol import EndReason

log = logging.getLogger(__name__)

DEFAULT_LISTEN: Final = "127.0.0.1:8788"
DEFAULT_GRACE_S: Final = 30.0
# Ended ids remembered, so that a second end is told 409 (not 404); older ones are forgotten.
REMEMBERED_ENDS: Final = 4096
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024  # what the service takes (PUT /v1/screenshots)
ScreenshotMode = Literal["screen", "player", "none"]


class AgentError(Exception):
    """A call the agent refuses: the HTTP status and a message naming what was expected."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """How the agent listens and whom it answers."""

    listen: str = DEFAULT_LISTEN
    allow_origins: tuple[str, ...] = ()
    # Listening beyond loopback exposes the journal to the network: an explicit choice.
    allow_remote: bool = False
    # Kiosk pages on allowed origins may fetch the token with POST /session.
    session: bool = True
    grace_s: float = DEFAULT_GRACE_S
    screenshots: ScreenshotMode = "screen"


class _PlayerSource:
    """The capture source of `--screenshots player`: the player hands every picture in.

    It returns nothing, so no screen is grabbed; it exists so that the device keeps a
    screenshot store for the pictures handed in.
    """

    async def capture(self) -> bytes | None:
        """Nothing: pictures come from the player."""
        return None


def capture_for(mode: ScreenshotMode) -> tuple[CaptureChoice, CaptureSource | None]:
    """The device's capture source for a mode, and the screen source for "take one now"."""
    if mode == "none":
        return None, None
    has_screen = not (sys.platform == "linux" and not os.environ.get("DISPLAY"))
    screen = MssCapture() if has_screen else None
    if mode == "screen" and screen is not None:
        return screen, screen
    return _PlayerSource(), screen


@dataclass(eq=False)
class _Open:
    """A play the player has started and not ended (a loop's current pass)."""

    play: Play
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watchdog: asyncio.Task[None] | None = None
    closed: bool = False


class Agent:
    """Plays by id over one open `Device`; the HTTP layer calls these methods."""

    def __init__(
        self, device: Device, *, grace_s: float = DEFAULT_GRACE_S, screen: CaptureSource | None
    ) -> None:
        self.device = device
        self.grace_s = grace_s
        self.screen = screen
        self._open: dict[str, _Open] = {}
        self._ended: OrderedDict[str, int] = OrderedDict()
        self.last_error: str | None = None

    # --- the calls ------------------------------------------------------------

    async def start(self, content: Content) -> str:
        """Start a play; its id once the start is durable in the journal."""
        try:
            play = await self.device.start(content)
        except DeviceError as exc:  # ids or values the protocol refuses
            raise AgentError(400, str(exc)) from None
        except JournalError as exc:
            self.last_error = f"journal: {exc}"
            log.error("NOT RECORDED: play of %s: %s", content.content_id, exc)
            raise AgentError(503, f"the play could not be recorded: {exc}") from None
        play_id = secrets.token_hex(8)
        entry = _Open(play)
        self._open[play_id] = entry
        self._watch(play_id, entry)
        log.info("play %s started seq=%d content=%s", play_id, play.seq, content.content_id)
        return play_id

    async def end(self, play_id: str, reason: EndReason) -> int:
        """End a play; the sequence of its sealed record."""
        entry = self._entry(play_id)
        async with entry.lock:
            if entry.closed:
                raise _already_ended(play_id, self._ended.get(play_id))
            return await self._close(play_id, entry, reason)

    async def next_pass(self, play_id: str) -> int:
        """Close a loop's pass `completed` and open the next under the same id; the closed seq."""
        entry = self._entry(play_id)
        async with entry.lock:
            if entry.closed:
                raise _already_ended(play_id, self._ended.get(play_id))
            sealed = entry.play.seq
            self._stop_watchdog(entry)
            try:
                entry.play = await entry.play.next_pass()
            except JournalError as exc:
                # The pass is sealed; the next could not be recorded: this id is over.
                entry.closed = True
                self._forget(play_id, sealed)
                self.last_error = f"journal: {exc}"
                raise AgentError(503, f"the next pass could not be recorded: {exc}") from None
            self._watch(play_id, entry)
            return sealed

    async def screenshot_now(self, play_id: str) -> str:
        """Take the play's proof screenshot from the screen now; its SHA-256."""
        if self.screen is None:
            raise AgentError(
                409, "expected a picture handed in (image/png or image/jpeg): no screen here"
            )
        picture = await self.screen.capture()
        if picture is None:
            raise AgentError(409, "the screen gave no picture; hand one in instead")
        return await self.hand_in(play_id, picture)

    async def hand_in(self, play_id: str, picture: bytes) -> str:
        """Keep a picture (PNG or JPEG) as the play's proof screenshot; its SHA-256."""
        entry = self._entry(play_id)
        png = await asyncio.to_thread(as_png, picture)
        async with entry.lock:
            if entry.closed:
                raise _already_ended(play_id, self._ended.get(play_id))
            try:
                return await entry.play.attach_screenshot(png)
            except DeviceError as exc:
                raise AgentError(409, str(exc)) from None

    async def status(self) -> dict[str, Any]:
        """Journal depth, clock state, connection and last error, with the full status."""
        message = await self.device.status()
        return {
            "device_id": self.device.config.device_id,
            "queue_depth": message.get("queue_depth"),
            "open_plays": len(self._open),
            "clock": {
                "synced": message.get("clock_synced"),
                "source": message.get("clock_source"),
                "offset_ms": message.get("clock_offset_ms"),
                "drift_ppm": message.get("drift_ppm"),
                "last_sync_ts": message.get("last_sync_ts"),
            },
            "connection": message.get("transport"),
            "last_error": self.last_error or message.get("last_error"),
            "status": message,
        }

    async def close(self) -> None:
        """Stop the watchdogs; `Device.close` ends what is open as `interrupted`."""
        for entry in self._open.values():
            self._stop_watchdog(entry)
        self._open.clear()

    # --- internals ------------------------------------------------------------

    def _entry(self, play_id: str) -> _Open:
        entry = self._open.get(play_id)
        if entry is not None:
            return entry
        if play_id in self._ended:
            raise _already_ended(play_id, self._ended[play_id])
        raise AgentError(404, f"expected the id of a play started on this agent, got {play_id!r}")

    async def _close(self, play_id: str, entry: _Open, reason: EndReason) -> int:
        entry.closed = True
        if entry.watchdog is not asyncio.current_task():
            self._stop_watchdog(entry)
        self._forget(play_id, entry.play.seq)
        record = await entry.play.end(reason)
        log.info("play %s ended seq=%d %s %d ms", play_id, record.seq, reason, record.duration_ms)
        return record.seq

    def _forget(self, play_id: str, seq: int) -> None:
        self._open.pop(play_id, None)
        self._ended[play_id] = seq
        while len(self._ended) > REMEMBERED_ENDS:
            self._ended.popitem(last=False)

    def _watch(self, play_id: str, entry: _Open) -> None:
        limit_s = 2 * entry.play.content.expected_ms / 1000 + self.grace_s
        entry.watchdog = asyncio.create_task(self._watchdog(play_id, entry, limit_s))

    async def _watchdog(self, play_id: str, entry: _Open, limit_s: float) -> None:
        await asyncio.sleep(limit_s)
        async with entry.lock:
            if entry.closed:
                return
            log.warning(
                "play %s (seq %d) not ended by the player within %.1f s: ended interrupted",
                play_id,
                entry.play.seq,
                limit_s,
            )
            with contextlib.suppress(JournalError):
                await self._close(play_id, entry, "interrupted")

    @staticmethod
    def _stop_watchdog(entry: _Open) -> None:
        if entry.watchdog is not None and not entry.watchdog.done():
            entry.watchdog.cancel()
        entry.watchdog = None


def _already_ended(play_id: str, seq: int | None) -> AgentError:
    sealed = f" (sealed as seq {seq})" if seq is not None else ""
    return AgentError(409, f"expected an open play, but play {play_id!r} has already ended{sealed}")


def as_png(picture: bytes) -> bytes:
    """The picture as PNG bytes (a JPEG is converted); AgentError if it is neither."""
    if len(picture) > MAX_IMAGE_BYTES:
        raise AgentError(413, f"expected a picture of at most {MAX_IMAGE_BYTES} bytes")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(picture)) as image:
            kind = image.format
            image.load()
            if kind == "PNG" and picture.startswith(PNG_MAGIC):
                return picture
            if kind != "JPEG":
                raise AgentError(415, f"expected a PNG or JPEG picture, got {kind}")
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise AgentError(400, f"expected a whole PNG or JPEG picture: {exc}") from None


# --- running it ---------------------------------------------------------------


def _print_ready(url: str) -> None:
    print(f"playproof agent listening on {url}", file=sys.stderr, flush=True)


async def run_agent(
    config: DeviceConfig,
    settings: AgentSettings,
    *,
    flush_timeout_s: float = 3.0,
    ready: Callable[[str], None] = _print_ready,
) -> None:
    """Open the device, serve the API until SIGTERM/SIGINT, then flush and close."""
    from playproof.device.agent_api import build_app
    from playproof.device.agent_security import allowed_hosts, is_loopback, load_or_create_token
    from playproof.listen import bind, parse_listen

    host, port = parse_listen(settings.listen)
    if not is_loopback(host) and not settings.allow_remote:
        raise ConfigError(
            f"expected a loopback --listen (127.0.0.1, ::1, localhost), got {host}: "
            "pass --allow-remote to listen beyond this machine"
        )
    require_full_sync(config.journal_synchronous)
    token = load_or_create_token(config.data_dir)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    source, screen = capture_for(settings.screenshots)
    device = await Device.open(config, capture=source)
    agent = Agent(device, grace_s=settings.grace_s, screen=screen)
    try:
        require_full_sync(device.journal.synchronous)
        app = build_app(
            agent,
            token=token,
            hosts=allowed_hosts(host, port),
            origins=settings.allow_origins,
            session=settings.session,
        )
        server = _AgentServer(
            uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        )
        shown = f"[{host}]" if ":" in host else host
        announce = asyncio.create_task(_announce(server, f"http://{shown}:{port}", ready))
        log.info(
            "agent for device %s: journal %s, next seq %d",
            config.device_id,
            device.journal.journal_id,
            device.journal.last_seq + 1,
        )
        await server.serve(sockets=[sock])
        announce.cancel()
    finally:
        await agent.close()
        flushed = await device.close(flush_timeout_s)
        log.info("agent stopped; %s", "all delivered" if flushed else "the rest stays queued")


class _AgentServer(uvicorn.Server):
    """uvicorn, minus its habit of raising SIGTERM again once it has stopped serving.

    uvicorn restores the default handler and re-raises the signal after a graceful stop,
    which would kill the process before the device is closed: open plays must end
    `interrupted` and the queue be flushed first.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop serving; nothing is raised again afterwards."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.should_exit = True


async def _announce(server: Any, url: str, ready: Callable[[str], None]) -> None:
    # uvicorn says it is listening only through this flag (no event to wait on).
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    ready(url)
