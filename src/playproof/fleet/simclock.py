"""The simulated clock: one definition shared by the service and the fleet (simulation only).

    sim_now_ms = epoch_ms + (real_now_ms - anchor_ms) * speed

At `anchor_ms` (a real UTC instant) simulated time is `epoch_ms`, and from then
on it runs `speed` times faster than real time: at 600x a five-hour offline
window lasts thirty real seconds. The monotonic clock a simulated device reads
is scaled by the same speed. The service (`playproof serve --sim-clock SPEC`, or
`PLAYPROOF_SIM_CLOCK`) and the fleet must use the same three numbers; the
service shows them in `/healthz` and the simulator adopts them from there, so
both read the same simulated time. Loud by design: a WARNING at start in both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from playproof.errors import ConfigError

log = logging.getLogger(__name__)

ENV: Final = "PLAYPROOF_SIM_CLOCK"
MAX_SPEED: Final = 100_000.0


def real_now_ms() -> float:
    """The real wall clock, UTC epoch milliseconds (fractional)."""
    return time.time_ns() / 1_000_000


@dataclass(frozen=True)
class SimClock:
    """Simulated time: `speed` times real time, `epoch_ms` at the real instant `anchor_ms`."""

    speed: float = 1.0
    anchor_ms: int = 0
    epoch_ms: int = 0

    def __post_init__(self) -> None:
        """Refuse a speed that cannot be simulated."""
        if not 0 < self.speed <= MAX_SPEED:
            raise ConfigError(f"expected a clock speed in (0, {MAX_SPEED:g}], got {self.speed:g}")

    @property
    def simulated(self) -> bool:
        """Whether this clock differs from the real one."""
        return self.speed != 1.0 or self.epoch_ms != self.anchor_ms

    def now_ms(self) -> int:
        """Simulated UTC epoch milliseconds now."""
        return self.epoch_ms + round((real_now_ms() - self.anchor_ms) * self.speed)

    def wall(self) -> float:
        """Simulated UTC epoch seconds now (a device's raw wall clock reads this)."""
        return self.now_ms() / 1000.0

    def monotonic(self) -> float:
        """A monotonic clock running at the simulated speed, in seconds."""
        return time.monotonic() * self.speed

    def real_seconds(self, sim_ms: float) -> float:
        """How many real seconds `sim_ms` simulated milliseconds take."""
        return sim_ms / 1000.0 / self.speed

    def sim_ms(self, real_seconds: float) -> float:
        """How many simulated milliseconds `real_seconds` real seconds are."""
        return real_seconds * 1000.0 * self.speed

    def info(self) -> dict[str, Any]:
        """What `/healthz` shows (with `now_ms`): mode, speed, anchor and epoch."""
        if not self.simulated:
            return {"mode": "real"}
        return {
            "mode": "simulated",
            "speed": self.speed,
            "anchor_ms": self.anchor_ms,
            "epoch_ms": self.epoch_ms,
        }

    def spec(self) -> str:
        """The spec that gives this clock back (`parse`)."""
        return f"speed={self.speed:g},anchor={self.anchor_ms},epoch={self.epoch_ms}"

    def warn(self, who: str) -> None:
        """Say loudly that time is simulated (once, at start)."""
        if self.simulated:
            log.warning(
                "SIMULATED CLOCK (%s): time runs at %gx from %d at real %d; "
                "for simulations only, never for billing",
                who,
                self.speed,
                self.epoch_ms,
                self.anchor_ms,
            )


def real_clock() -> SimClock:
    """The real clock, in the same shape."""
    now = int(real_now_ms())
    return SimClock(1.0, now, now)


def parse(spec: str, now_ms: int | None = None) -> SimClock:
    """`600`, or `speed=600,anchor=MS,epoch=MS` (anchor and epoch default to now)."""
    now = int(real_now_ms()) if now_ms is None else now_ms
    fields = _fields(spec)
    try:
        speed = float(fields.get("speed", "1"))
        anchor = int(fields.get("anchor", now))
        epoch = int(fields.get("epoch", anchor))
    except ValueError:
        raise ConfigError(_expected(spec)) from None
    return SimClock(speed, anchor, epoch)


def from_info(info: dict[str, Any]) -> SimClock:
    """The clock a service shows in `/healthz` (its `clock` object)."""
    if info.get("mode", "real") == "real":
        return real_clock()
    try:
        return SimClock(float(info["speed"]), int(info["anchor_ms"]), int(info["epoch_ms"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"expected a simulated clock's speed, anchor and epoch, got {info}"
        ) from None


def service_clock(spec: str | None) -> dict[str, Any]:
    """`Service(...)` keyword arguments for a clock spec: none for the real clock."""
    if spec is None or not spec.strip():
        return {}
    clock = parse(spec)
    if not clock.simulated:
        return {}
    return {"clock": clock.now_ms, "clock_info": clock.info()}


def _fields(spec: str) -> dict[str, str]:
    text = spec.strip()
    if not text:
        raise ConfigError(_expected(spec))
    if "=" not in text:
        return {"speed": text}
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("speed", "anchor", "epoch"):
            raise ConfigError(_expected(spec))
        fields[name.strip()] = value.strip()
    return fields


def _expected(spec: str) -> str:
    return f"expected a clock spec such as 600 or speed=600,anchor=MS,epoch=MS, got {spec!r}"
