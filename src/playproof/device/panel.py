"""What the display panel showed during a play (PROTOCOL.md section 7): pluggable sources.

A `PanelSource` answers one question, "what state is the panel in now?", with one of
`on`, `standby`, `off`, `no_signal`, `unknown`. A play is observed at its start, at
its screenshot moment (mid-play when it takes none) and at its end, and records the
worst state seen (worst first: `off`, `standby`, `no_signal`, `unknown`, `on`).

Reading a source never delays the durable start of a play: `PanelMonitor` reads in
the background (an asyncio task; blocking reads on the shared pool), and a reading
not done when the play needs it counts as `unknown`. While plays are open it keeps
reading every `interval_s`, so that the end of a play takes the freshest reading
without waiting for one. A source that fails or hangs degrades to `unknown` with a
log line; the play goes on.

Sources: `none` (always `unknown`), `drm` (here), `cec` and `mdc` (panel_sources.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from playproof.config import (
    PANEL_CEC_DEVICE,
    PANEL_DRM_ROOT,
    PANEL_MDC_ID,
    PANEL_MDC_PORT,
    PANEL_TIMEOUT_S,
)
from playproof.device.blocking import run_blocking
from playproof.errors import ConfigError, DeviceError
from playproof.protocol import PANEL_STATES, PanelState
from playproof.protocol import PanelSource as PanelSourceName

log = logging.getLogger(__name__)

PANEL_CHOICES: Final = ("drm", "cec", "mdc", "none")
DEFAULT_INTERVAL_S: Final = 2.0
_RANK: Final = {state: rank for rank, state in enumerate(PANEL_STATES)}


class PanelError(DeviceError):
    """A panel source could not read the panel (the reading counts as `unknown`)."""


def worst(states: Iterable[PanelState]) -> PanelState:
    """The worst of `states` (`unknown` for none): off < standby < no_signal < unknown < on."""
    found: PanelState = "on"
    seen = False
    for state in states:
        seen = True
        if _RANK[state] < _RANK[found]:
            found = state
    return found if seen else "unknown"


def best(states: Iterable[PanelState]) -> PanelState:
    """The best of `states` (`unknown` for none)."""
    ranked = sorted(states, key=_RANK.__getitem__)
    return ranked[-1] if ranked else "unknown"


class PanelSource(Protocol):
    """Something that can tell the panel's state now; `name` goes into the record."""

    name: PanelSourceName

    async def read(self) -> PanelState:
        """The panel's state now; raise (anything) when it cannot be read."""
        ...


class NoPanel:
    """No source: every reading is `unknown` (a device that cannot tell never says `on`)."""

    name: PanelSourceName = "none"

    async def read(self) -> PanelState:
        """`unknown`."""
        return "unknown"


class DrmPanel:
    """The Linux DRM connector's `status`, `edid` and `dpms` under /sys/class/drm.

    It sees the signal, not the lit panel: a monitor in standby still answers its
    EDID, and a TV showing another input still reads `connected`. It is the weakest
    source: `on` only for `connected`, with a non-empty EDID and DPMS `On`; `off` for
    DPMS Off; `standby` for Standby or Suspend; `no_signal` for `disconnected`;
    anything else `unknown`. With no `connector` named, the best state of all the
    connectors counts (a player drives one display; name it when there are several).
    """

    name: PanelSourceName = "drm"

    def __init__(self, root: Path = PANEL_DRM_ROOT, connector: str | None = None) -> None:
        self.root = root
        self.connector = connector

    async def read(self) -> PanelState:
        """The connector's state now (sysfs reads, on the shared pool)."""
        return await run_blocking(self.read_now)

    def read_now(self) -> PanelState:
        """The same, blocking."""
        folders = self._connectors()
        if not folders:
            wanted = f" named {self.connector}" if self.connector else ""
            raise PanelError(f"no DRM connector{wanted} under {self.root}")
        return best(_connector_state(folder) for folder in folders)

    def _connectors(self) -> list[Path]:
        try:
            found = sorted(p for p in self.root.glob("card*-*") if (p / "status").exists())
        except OSError as exc:
            raise PanelError(f"cannot list {self.root}: {exc.strerror}") from None
        if self.connector is None:
            return found
        # "HDMI-A-1" names card?-HDMI-A-1; "card1-HDMI-A-1" names exactly that one.
        return [
            p for p in found if p.name == self.connector or p.name.endswith(f"-{self.connector}")
        ]


def _connector_state(folder: Path) -> PanelState:
    try:
        status = (folder / "status").read_text().strip().lower()
        if status == "disconnected":
            return "no_signal"
        if status != "connected":
            return "unknown"
        dpms = (folder / "dpms").read_text().strip().lower()
        if dpms == "off":
            return "off"
        if dpms in ("standby", "suspend"):
            return "standby"
        edid = (folder / "edid").read_bytes()
    except FileNotFoundError:
        return "unknown"
    except OSError as exc:
        raise PanelError(f"cannot read {folder}: {exc.strerror}") from None
    return "on" if dpms == "on" and edid else "unknown"


@dataclass(frozen=True, kw_only=True)
class PanelConfig:
    """Settings of the panel sources (`--panel-*` options); only the chosen one's matter."""

    timeout_s: float = PANEL_TIMEOUT_S
    interval_s: float = DEFAULT_INTERVAL_S
    drm_root: Path = PANEL_DRM_ROOT
    drm_connector: str | None = None
    cec_device: str = PANEL_CEC_DEVICE
    cec_program: str = "cec-ctl"
    mdc_host: str | None = None
    mdc_port: int = PANEL_MDC_PORT
    mdc_id: int = PANEL_MDC_ID
    # The secured protocol's PIN: set, the connection is TLS and the PIN is sent.
    mdc_pin: str | None = None


def make_source(kind: str, config: PanelConfig | None = None) -> PanelSource:
    """The source `--panel` names; ConfigError for an unknown one or missing settings."""
    config = config or PanelConfig()
    if kind == "none":
        return NoPanel()
    if kind == "drm":
        return DrmPanel(config.drm_root, config.drm_connector)
    from playproof.device.panel_sources import CecPanel, MdcPanel

    if kind == "cec":
        return CecPanel(config.cec_device, program=config.cec_program, timeout_s=config.timeout_s)
    if kind == "mdc":
        if not config.mdc_host:
            raise ConfigError("--panel mdc needs the display's address (--panel-mdc-host)")
        if not 0 <= config.mdc_id <= 0xFF:
            raise ConfigError(f"expected an MDC display id of 0..255, got {config.mdc_id}")
        return MdcPanel(
            config.mdc_host,
            config.mdc_port,
            display_id=config.mdc_id,
            timeout_s=config.timeout_s,
            pin=config.mdc_pin,
        )
    raise ConfigError(f"expected --panel among {', '.join(PANEL_CHOICES)}, got {kind!r}")


class Reading(NamedTuple):
    """One reading: the state, and when it started and finished (monotonic seconds)."""

    state: PanelState
    started: float
    finished: float


class PanelMonitor:
    """Reads one source in the background for every play of a device.

    `observe()` starts a reading (or joins the one under way) and returns its task at
    once; a reading never raises (a failure is `unknown`, logged) and never outlives
    `timeout_s`. `run()` keeps reading every `interval_s` while plays are open.
    """

    def __init__(
        self,
        source: PanelSource,
        *,
        timeout_s: float = PANEL_TIMEOUT_S,
        interval_s: float = DEFAULT_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._monotonic = monotonic
        self.latest: Reading | None = None
        self.last_error: str | None = None
        self._inflight: asyncio.Task[Reading] | None = None
        self.inflight_started = 0.0
        self._open_plays = 0
        self._plays_open = asyncio.Event()

    @property
    def name(self) -> PanelSourceName:
        """The source's name, as records carry it."""
        return self.source.name

    @property
    def last_state(self) -> PanelState | None:
        """The last reading's state (None before the first)."""
        return None if self.latest is None else self.latest.state

    def observe(self) -> asyncio.Task[Reading]:
        """A reading starting now (or the one under way); never blocks."""
        if self._inflight is None or self._inflight.done():
            self.inflight_started = self._monotonic()
            self._inflight = asyncio.create_task(self._read(self.inflight_started))
        return self._inflight

    def play_started(self) -> None:
        """A play opened: keep readings fresh until it ends."""
        self._open_plays += 1
        self._plays_open.set()

    def play_ended(self) -> None:
        """A play closed."""
        self._open_plays = max(0, self._open_plays - 1)
        if self._open_plays == 0:
            self._plays_open.clear()

    def fresh_state(self, since: float) -> PanelState:
        """The latest reading's state if it started after `since` and is recent, else `unknown`.

        Recent: finished within `interval_s + timeout_s` of now, so that a source that
        hangs is not taken for the state it was in before it hung.
        """
        latest = self.latest
        if latest is None or latest.started < since:
            return "unknown"
        if self._monotonic() - latest.finished > self.interval_s + self.timeout_s:
            return "unknown"
        return latest.state

    async def run(self) -> None:
        """Keep reading every `interval_s` while plays are open, until cancelled."""
        while True:
            await self._plays_open.wait()
            await asyncio.shield(self.observe())
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        """Stop the reading under way."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _read(self, started: float) -> Reading:
        try:
            state = await asyncio.wait_for(self.source.read(), self.timeout_s)
            if state not in _RANK:
                raise PanelError(f"expected a panel state, got {state!r}")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            state = self._failed(f"no answer within {self.timeout_s:g} s")
        except Exception as exc:  # any source's failure degrades to unknown, never a crash
            state = self._failed(str(exc) or type(exc).__name__)
        else:
            if self.last_error is not None:
                log.info("panel source %s reads again: %s", self.name, state)
                self.last_error = None
        reading = Reading(state, started, self._monotonic())
        self.latest = reading
        return reading

    def _failed(self, error: str) -> PanelState:
        if error != self.last_error:
            log.warning("panel source %s failed (counted as unknown): %s", self.name, error)
        self.last_error = error
        return "unknown"


class PlayPanel:
    """One play's observations: at the start, at the screenshot moment, at the end."""

    def __init__(self, monitor: PanelMonitor) -> None:
        self.monitor = monitor
        self._readings = [monitor.observe()]
        # The start's reading may be one just under way: the end accepts any reading
        # from that one on.
        self.started = monitor.inflight_started
        monitor.play_started()
        self._closed = False

    def observe(self) -> None:
        """Observe now (the screenshot moment)."""
        self._readings.append(self.monitor.observe())

    def so_far(self) -> PanelState | None:
        """The worst state of the readings done so far (None when none is done)."""
        done = [t.result().state for t in self._readings if t.done() and not t.cancelled()]
        return worst(done) if done else None

    def at_end(self) -> PanelState:
        """The play's state: the worst of its readings, a late one counting `unknown`."""
        states = [
            t.result().state if t.done() and not t.cancelled() else "unknown"
            for t in self._readings
        ]
        # The end: the freshest reading taken during the play; none is started and
        # awaited here, so that ending a play (and starting the next) never waits.
        states.append(self.monitor.fresh_state(self.started))
        self.monitor.observe()  # for the next play's health, and the status message
        self.close()
        return worst(states)

    def close(self) -> None:
        """The play is over (or abandoned): no more readings on its behalf."""
        if not self._closed:
            self._closed = True
            self.monitor.play_ended()
