"""A simulated display panel for the fleet: on, except in the windows its plan turns it off.

It stands in for a display vendor's API (source `vendor`), which we do not have
for simulated screens: the state comes from the plan, read against the
screen's simulated clock. A panel off for a while makes that while's plays
`partial` with the flag `panel_off` (PROTOCOL.md section 7), which the demo shows.
"""

from __future__ import annotations

from collections.abc import Callable

from playproof.protocol import PanelSource as PanelSourceName
from playproof.protocol import PanelState


class SimulatedPanel:
    """A panel that is `off` while `now_ms()` (run time) is inside one of `off` windows."""

    name: PanelSourceName = "vendor"

    def __init__(self, off: tuple[tuple[int, int], ...], now_ms: Callable[[], int]) -> None:
        self.off = off
        self.now_ms = now_ms

    async def read(self) -> PanelState:
        """`off` inside a window, else `on`."""
        now = self.now_ms()
        return "off" if any(start <= now < end for start, end in self.off) else "on"
