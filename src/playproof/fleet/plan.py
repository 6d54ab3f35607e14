"""The fleet's plan: every screen, its playlist and its faults, drawn from one seed.

The same options and seed give the same plan: the same screens, playlists,
clock skews, offline windows, clock steps and crash times (and each screen's own
random generator, which decides skips and interruptions). What a run makes of
the plan depends on timing too, so two runs agree on the faults, not to the
millisecond.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from playproof.device.journal import DEFAULT_CAPACITY
from playproof.errors import ConfigError

SECOND_MS: Final = 1000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
# A long offline window outlasts the protocol's 4 h offline limit by this much at least.
LONG_OFFLINE_MS: Final = (4 * HOUR_MS + 15 * MINUTE_MS, 5 * HOUR_MS + 30 * MINUTE_MS)
SKEW_RANGES_MS: Final = (
    (5 * SECOND_MS, 59 * SECOND_MS),
    (2 * MINUTE_MS, 59 * MINUTE_MS),
    (1 * HOUR_MS, 6 * HOUR_MS),
)
CAMPAIGNS: Final = 24
SUPPLIERS: Final = 8
CONTENTS: Final = 5  # per campaign
AD_GROUPS: Final = 3  # per campaign
SCREENS_PER_STORE: Final = 10
# The demo's layered banner: how long it shows, and how much of the end of the item
# under it it covers (more than the 1.5 s the overlap rule allows). It ends after
# that item, never inside it (screen.py `_layered` says why).
BANNER_MS: Final = 5 * SECOND_MS
BANNER_OVERLAP_MS: Final = 3 * SECOND_MS
_UNITS: Final = {"ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": 24 * HOUR_MS}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")


def parse_duration(text: str) -> int:
    """`90`, `90s`, `5m`, `2h`, `500ms` or `1d` as milliseconds (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"expected a duration such as 90s, 5m or 2h, got {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2) or "s"])


def parse_range(text: str) -> tuple[int, int]:
    """`10s..30s` (or one duration) as (low, high) milliseconds."""
    low, _, high = text.partition("..")
    bounds = (parse_duration(low), parse_duration(high or low))
    if not 0 < bounds[0] <= bounds[1]:
        raise ConfigError(f"expected MIN..MAX with 0 < MIN <= MAX, got {text!r}")
    return bounds


def show_duration(ms: float) -> str:
    """A duration for people: `45 s`, `12.5 min`, `5.2 h`."""
    if ms < MINUTE_MS:
        return f"{ms / SECOND_MS:.3g} s"
    if ms < HOUR_MS:
        return f"{ms / MINUTE_MS:.3g} min"
    return f"{ms / HOUR_MS:.3g} h"


@dataclass(frozen=True)
class Faults:
    """How often each fault happens; shares of screens or chances per play (0 to 1)."""

    offline: float = 0.1  # screens with short offline windows
    offline_windows: int = 2  # windows per such screen
    offline_length: tuple[int, int] = (1 * MINUTE_MS, 30 * MINUTE_MS)
    long_offline: float = 0.02  # screens with one window past the 4 h limit (long runs)
    skew: float = 0.1  # screens whose raw clock is off by seconds, minutes or hours, no NTP
    skew_max_ms: int = 6 * HOUR_MS
    steps: float = 0.05  # screens whose clock someone sets mid-run
    skip: float = 0.1  # chance a play is skipped
    interrupt: float = 0.02  # chance a play is interrupted
    error: float = 0.01  # chance a play ends in error
    loops: float = 0.1  # chance a playlist item is a content loop (one record per pass)
    crash: float = 0.05  # screens whose player crashes and restarts
    crashes: int = 2  # crashes per such screen at most
    panel_off: float = 0.0  # screens whose panel is off for a while (their plays: partial)

    def __post_init__(self) -> None:
        """Refuse shares outside 0..1."""
        shares = ("offline", "long_offline", "skew", "steps", "skip", "interrupt", "error")
        for name in (*shares, "panel_off"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"expected --{name} between 0 and 1, got {getattr(self, name)}")
        if not 0.0 <= self.crash <= 1.0 or not 0.0 <= self.loops <= 1.0:
            raise ConfigError("expected --crash and --loops between 0 and 1")

    @classmethod
    def none(cls) -> Faults:
        """No faults at all: every screen online, on time, playing to the end."""
        return cls(
            0.0, 0, (MINUTE_MS, MINUTE_MS), 0.0, 0.0, HOUR_MS, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
        )


@dataclass(frozen=True)
class FleetOptions:
    """What to simulate; durations are simulated milliseconds."""

    devices: int
    duration_ms: int
    devices_dir: Path
    seed: int = 1
    faults: Faults = field(default_factory=Faults)
    play_length: tuple[int, int] = (10 * SECOND_MS, 30 * SECOND_MS)
    prefix: str = "sim"
    capacity: int = DEFAULT_CAPACITY
    checkpoint_ms: int = 5 * SECOND_MS
    ramp_s: float | None = None  # real seconds to start every screen; None: about 200 a second
    drain_s: float = 30.0  # real seconds the screens get to deliver at the end
    workers: int = 0  # processes; 0: as many as file descriptors require
    ntp: bool = True  # screens with good clocks keep time with the fleet's NTP server
    # Simulation-only speed-up: journals without fsync, their SQLite calls made on the
    # event loop's thread. Crashes stay exact (a crash here is in-process); see docs/fleet.md.
    fast_journals: bool = False
    catalog: bool = True  # import the catalog that books this fleet (bookings.py) first
    screenshots: int = 0  # screens taking proof screenshots (a simulated display each)
    # The demo's deliberate mistakes (a layered banner, a wrong picture; bookings.py adds
    # the catalog's own), so that verification has failures to explain.
    breaks: bool = False

    def __post_init__(self) -> None:
        """Refuse a fleet that cannot run."""
        if self.devices < 1:
            raise ConfigError(f"expected at least 1 device, got {self.devices}")
        if self.duration_ms < 1:
            raise ConfigError(f"expected a duration above 0, got {self.duration_ms} ms")
        if not 0 <= self.screenshots <= self.devices:
            raise ConfigError(
                f"expected --screenshots from 0 to the {self.devices} devices, "
                f"got {self.screenshots}"
            )

    def ramp(self) -> float:
        """Real seconds over which screens start."""
        return self.ramp_s if self.ramp_s is not None else min(60.0, self.devices / 200.0)


@dataclass(frozen=True)
class Item:
    """One playlist entry: the billing ids, its length and, for a loop, its passes."""

    campaign_id: str
    ad_group_id: str
    content_id: str
    supplier_id: str
    duration_ms: int
    passes: int = 1
    banner: Item | None = None  # shown on top of this item for a while (a second layer)


@dataclass(frozen=True)
class ScreenPlan:
    """One screen: who it is, what it plays and what goes wrong (times from the run's start)."""

    device_id: str
    store_id: str
    data_dir: Path
    seed: int
    playlist: tuple[Item, ...]
    start_ms: int = 0
    skew_ms: int = 0
    step: tuple[int, int] | None = None  # (when, by how much)
    offline: tuple[tuple[int, int], ...] = ()  # (from, to)
    crashes: tuple[tuple[int, int], ...] = ()  # (when, down for)
    ntp: bool = True
    capture: bool = False  # takes proof screenshots of what it shows
    wrong: tuple[tuple[str, str], ...] = ()  # (content, the content whose picture it shows)
    panel_off: tuple[tuple[int, int], ...] = ()  # (from, to): the display is off

    @property
    def steady(self) -> bool:
        """Whether nothing cuts this screen off or brings it down during the run."""
        return not self.offline and not self.crashes


def device_ids(options: FleetOptions) -> list[str]:
    """The fleet's device ids: `sim-0001` ... (as wide as the fleet needs)."""
    width = max(4, len(str(options.devices)))
    return [f"{options.prefix}-{i:0{width}d}" for i in range(1, options.devices + 1)]


def build(options: FleetOptions, speed: float) -> list[ScreenPlan]:
    """Every screen's plan, drawn from the options' seed."""
    rng = random.Random(options.seed)
    ramp_ms = options.ramp() * 1000 * speed
    screens = [
        _screen(options, rng, i, device_id, round(ramp_ms * i / options.devices))
        for i, device_id in enumerate(device_ids(options))
    ]
    # After every draw, so that the same seed still gives the same screens and faults.
    screens = _capturing(screens, options.screenshots)
    screens = _panels_off(screens, options)
    return _broken(screens) if options.breaks else screens


def _screen(
    options: FleetOptions, rng: random.Random, index: int, device_id: str, start_ms: int
) -> ScreenPlan:
    faults = options.faults
    skew = _skew(rng, index, faults.skew_max_ms) if rng.random() < faults.skew else 0
    return ScreenPlan(
        device_id=device_id,
        store_id=f"store-{index // SCREENS_PER_STORE + 1:04d}",
        data_dir=options.devices_dir / device_id,
        seed=rng.getrandbits(32),
        playlist=_playlist(options, rng),
        start_ms=start_ms,
        skew_ms=skew,
        step=_step(rng, options) if rng.random() < faults.steps else None,
        offline=_offline(rng, options),
        crashes=_crashes(rng, options) if rng.random() < faults.crash else (),
        ntp=options.ntp and skew == 0,
    )


def _playlist(options: FleetOptions, rng: random.Random) -> tuple[Item, ...]:
    low, high = options.play_length
    items = []
    for _ in range(rng.randint(3, 8)):
        campaign = rng.randrange(CAMPAIGNS)
        passes = rng.randint(2, 4) if rng.random() < options.faults.loops else 1
        items.append(
            Item(
                campaign_id=f"cmp-{campaign:03d}",
                ad_group_id=f"ag-{campaign:03d}-{rng.randrange(AD_GROUPS)}",
                content_id=f"cnt-{campaign:03d}-{rng.randrange(CONTENTS)}",
                supplier_id=f"sup-{campaign % SUPPLIERS:02d}",
                duration_ms=rng.randint(low, high) // 1000 * 1000 or low,
                passes=passes,
            )
        )
    return tuple(items)


def _capturing(screens: list[ScreenPlan], count: int) -> list[ScreenPlan]:
    """`count` screens spread over the fleet take screenshots, steady ones first."""
    if count == 0:
        return screens
    step = len(screens) / count
    chosen = {_steady_near(screens, int(i * step), int((i + 1) * step)) for i in range(count)}
    return [replace(s, capture=True) if i in chosen else s for i, s in enumerate(screens)]


def _panels_off(screens: list[ScreenPlan], options: FleetOptions) -> list[ScreenPlan]:
    """A share of the screens (`faults.panel_off`) have their display off once for a while.

    Drawn from a generator of its own, so that the other draws stay what the seed gave.
    """
    share = options.faults.panel_off
    if share <= 0:
        return screens
    rng = random.Random(options.seed * 7919 + 1)
    duration = options.duration_ms
    out = []
    for screen in screens:
        if rng.random() < share:
            length = min(rng.randint(2 * MINUTE_MS, 10 * MINUTE_MS), duration // 3)
            start = rng.randint(0, max(0, duration - length))
            screen = replace(screen, panel_off=((start, start + length),))
        out.append(screen)
    return out


def _steady_near(screens: list[ScreenPlan], low: int, high: int) -> int:
    """The first steady screen in [low, high), else `low`."""
    return next((i for i in range(low, high) if screens[i].steady), low)


def _broken(screens: list[ScreenPlan]) -> list[ScreenPlan]:
    """The demo's screen-side mistakes: one screen layers a banner, one shows a wrong picture.

    The banner goes on the first steady screen that takes no screenshots, over its
    first item (a booking of one zone, so plays overlap); the wrong picture on the
    first steady capturing screen, for its first item's content.
    """
    out = list(screens)
    plain = [i for i, s in enumerate(out) if not s.capture]
    capturing = [i for i, s in enumerate(out) if s.capture]
    if plain:
        i = next((j for j in plain if out[j].steady), plain[0])
        first, *rest = out[i].playlist
        out[i] = replace(out[i], playlist=(replace(first, banner=banner_for(first)), *rest))
    if capturing:
        i = next((j for j in capturing if out[j].steady), capturing[0])
        content = out[i].playlist[0].content_id
        out[i] = replace(out[i], wrong=((content, other_content(content)),))
    return out


def banner_for(item: Item) -> Item:
    """A short banner of the item's campaign (another of its contents) to layer on it."""
    return replace(
        item,
        content_id=other_content(item.content_id, same_campaign=True),
        duration_ms=BANNER_MS,
        passes=1,
    )


def other_content(content_id: str, same_campaign: bool = False) -> str:
    """Another content: the next of the same campaign, or the same slot of the next campaign."""
    _, campaign, slot = content_id.split("-")
    c, k = int(campaign), int(slot)
    if same_campaign:
        return f"cnt-{c:03d}-{(k + 1) % CONTENTS}"
    return f"cnt-{(c + 1) % CAMPAIGNS:03d}-{k}"


def _skew(rng: random.Random, index: int, most_ms: int) -> int:
    # Seconds, minutes and hours in turn (as far as `most_ms` goes), either way.
    ranges = [(low, min(high, most_ms)) for low, high in SKEW_RANGES_MS if low <= most_ms]
    low, high = ranges[index % len(ranges)] if ranges else (0, 0)
    return rng.choice((-1, 1)) * rng.randint(low, high)


def _step(rng: random.Random, options: FleetOptions) -> tuple[int, int]:
    when = round(options.duration_ms * rng.uniform(0.2, 0.8))
    return when, rng.choice((-1, 1)) * rng.randint(MINUTE_MS, 30 * MINUTE_MS)


def _offline(rng: random.Random, options: FleetOptions) -> tuple[tuple[int, int], ...]:
    faults, duration = options.faults, options.duration_ms
    windows = []
    if rng.random() < faults.offline:
        for _ in range(faults.offline_windows):
            length = min(rng.randint(*faults.offline_length), duration // 2)
            start = rng.randint(0, max(0, duration - length))
            windows.append((start, start + length))
    if rng.random() < faults.long_offline and duration > LONG_OFFLINE_MS[0] + 10 * MINUTE_MS:
        length = min(rng.randint(*LONG_OFFLINE_MS), duration - 10 * MINUTE_MS)
        start = rng.randint(0, duration - 10 * MINUTE_MS - length)
        windows.append((start, start + length))
    return tuple(sorted(windows))


def _crashes(rng: random.Random, options: FleetOptions) -> tuple[tuple[int, int], ...]:
    count = rng.randint(1, max(1, options.faults.crashes))
    times = sorted(round(options.duration_ms * rng.uniform(0.05, 0.9)) for _ in range(count))
    crashes: list[tuple[int, int]] = []
    for when in times:
        # A screen crashes again only once it has been back for a while.
        if crashes and when < sum(crashes[-1]) + 10 * SECOND_MS:
            continue
        crashes.append((when, rng.randint(5 * SECOND_MS, 2 * MINUTE_MS)))
    return tuple(crashes)


def workers_for(devices: int, fd_limit: int, wanted: int = 0) -> int:
    """Processes to run `devices` screens in: each screen holds about 4 descriptors."""
    if wanted > 0:
        return min(wanted, devices)
    per_worker = max(1, (fd_limit - 256) // 4)
    return max(1, math.ceil(devices / per_worker))
