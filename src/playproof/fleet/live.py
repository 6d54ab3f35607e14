"""The fleet in the terminal while it runs: a rich live table, or a line every few seconds.

Plays per second, acks by result, rejects by reason, records queued on the
screens, connected / offline / crashed screens, the simulated time, and the
health of the simulator itself (event-loop lag, stream ack round trip).
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from playproof.fleet.plan import show_duration
from playproof.fleet.progress import Progress, quantile

RATE_WINDOW_S: Final = 5.0
LINE_EVERY_S: Final = 5.0


class View(Protocol):
    """Something that shows progress while the fleet runs."""

    def update(self, progress: Progress) -> None:
        """Show the latest progress."""

    def __enter__(self) -> View:
        """Start showing."""

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop showing."""


class Rates:
    """Per-second rates of the cumulative counters over the last few seconds."""

    def __init__(self) -> None:
        self._points: deque[tuple[float, int, int]] = deque()

    def add(self, progress: Progress) -> tuple[float, float]:
        """Record the counters now; plays/s and acks/s over the window."""
        now = time.monotonic()
        acks = sum(progress.acks.values())
        self._points.append((now, progress.recorded, acks))
        while len(self._points) > 2 and now - self._points[0][0] > RATE_WINDOW_S:
            self._points.popleft()
        first = self._points[0]
        span = now - first[0]
        if span <= 0:
            return 0.0, 0.0
        return (progress.recorded - first[1]) / span, (acks - first[2]) / span


class Header:
    """What the run is: its speed, its simulated span, where it is."""

    def __init__(self, speed: float, start_ms: int, duration_ms: int, server: str) -> None:
        self.speed = speed
        self.start_ms = start_ms
        self.duration_ms = duration_ms
        self.server = server

    def line(self, progress: Progress) -> str:
        """`SIMULATED CLOCK 600x · 14:02:11 UTC · 1.5 h of 6 h · running · service URL`."""
        if not progress.sim_now_ms:
            return f"starting the fleet's workers · service {self.server}"
        elapsed = min(self.duration_ms, max(0, progress.sim_now_ms - self.start_ms))
        when = datetime.fromtimestamp(progress.sim_now_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        clock = "real time" if self.speed == 1 else f"SIMULATED CLOCK {self.speed:g}x"
        span = f"{show_duration(elapsed)} of {show_duration(self.duration_ms)}"
        return f"{clock} · {when} UTC · {span} · {progress.phase} · service {self.server}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def table(progress: Progress, plays_s: float, acks_s: float) -> Table:
    """The live numbers as a two-column table."""
    acks = progress.acks
    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        "screens",
        f"{progress.started:,}/{progress.screens:,} started · {progress.connected:,} connected"
        f" · {progress.offline:,} offline · {progress.down:,} crashed now"
        f" ({progress.crashes:,} crashes)",
    )
    grid.add_row("plays", f"{progress.recorded:,} recorded · {plays_s:,.1f}/s")
    grid.add_row(
        "acks",
        f"{acks.get('accepted', 0):,} accepted · {acks.get('duplicate', 0):,} duplicate · "
        f"{acks.get('rejected', 0):,} rejected · {acks_s:,.1f}/s",
    )
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(progress.rejected.items())) or "none"
    grid.add_row("rejects", reasons)
    grid.add_row("queued", f"{progress.queued:,} records waiting on the screens")
    grid.add_row(
        "simulator",
        f"loop lag p99 {_ms(quantile(progress.lag_ms, 0.99))} · stream ack round trip "
        f"p50 {_ms(quantile(progress.round_trip_ms, 0.5))} "
        f"p99 {_ms(quantile(progress.round_trip_ms, 0.99))}",
    )
    return grid


class LiveView:
    """A rich Live table, refreshed with each report."""

    def __init__(self, header: Header, console: Console | None = None) -> None:
        self.header = header
        self.rates = Rates()
        self.console = console or Console()
        self._live = Live(console=self.console, refresh_per_second=4, transient=False)

    def render(self, progress: Progress) -> RenderableType:
        """The view of one report."""
        plays_s, acks_s = self.rates.add(progress)
        body = Group(
            Text(self.header.line(progress), style="bold yellow" if self.header.speed != 1 else ""),
            table(progress, plays_s, acks_s),
        )
        return Panel(
            body,
            title="playproof fleet",
            subtitle="Ctrl-C stops the fleet, drains it and reconciles",
            expand=False,
        )

    def update(self, progress: Progress) -> None:
        """Show the latest progress."""
        self._live.update(self.render(progress))

    def __enter__(self) -> LiveView:
        """Start the live display."""
        self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the live display, leaving its last frame."""
        self._live.stop()


class LineView:
    """One plain line every few seconds (logs, pipes, CI)."""

    def __init__(self, header: Header, console: Console | None = None) -> None:
        self.header = header
        self.rates = Rates()
        self.console = console or Console(stderr=True)
        self._last = 0.0
        self._phase = ""

    def update(self, progress: Progress) -> None:
        """Print a line when one is due, and at each change of phase."""
        plays_s, acks_s = self.rates.add(progress)
        now = time.monotonic()
        if now - self._last < LINE_EVERY_S and progress.phase == self._phase:
            return
        self._last, self._phase = now, progress.phase
        acks = progress.acks
        self.console.print(
            f"{self.header.line(progress)} | {progress.recorded:,} plays ({plays_s:,.0f}/s), "
            f"acks {acks.get('accepted', 0):,}/{acks.get('duplicate', 0):,}/"
            f"{acks.get('rejected', 0):,} ({acks_s:,.0f}/s), queued {progress.queued:,}, "
            f"connected {progress.connected:,}, offline {progress.offline:,}, "
            f"crashed {progress.down:,}",
            highlight=False,
        )

    def __enter__(self) -> LineView:
        """Nothing to start."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Nothing to stop."""
