"""The fleet's plan: drawn from a seed, with the faults asked for."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from playproof.errors import ConfigError
from playproof.fleet.plan import (
    HOUR_MS,
    LONG_OFFLINE_MS,
    Faults,
    FleetOptions,
    build,
    device_ids,
    parse_duration,
    parse_range,
    workers_for,
)

OPTIONS = FleetOptions(devices=200, duration_ms=6 * HOUR_MS, devices_dir=Path("/fleet"), seed=5)


def test_durations_take_a_unit_or_default_to_seconds() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "5m", "2h", "500ms", "1.5h")] == [
        90_000,
        90_000,
        300_000,
        7_200_000,
        500,
        5_400_000,
    ]
    assert parse_range("10s..30s") == (10_000, 30_000) and parse_range("10s") == (10_000, 10_000)
    for bad in ("soon", "5 parsecs", "-3s", "30s..10s"):
        with pytest.raises(ConfigError):
            parse_range(bad)


def test_the_same_seed_gives_the_same_fleet_and_another_seed_another() -> None:
    assert build(OPTIONS, 600) == build(OPTIONS, 600)
    assert build(OPTIONS, 600) != build(replace(OPTIONS, seed=6), 600)
    assert [s.device_id for s in build(OPTIONS, 600)] == device_ids(OPTIONS)
    assert device_ids(OPTIONS)[:2] == ["sim-0001", "sim-0002"]


def test_each_fault_falls_on_about_its_share_of_screens() -> None:
    screens = build(replace(OPTIONS, devices=2000), 600)
    share = {
        "offline": sum(1 for s in screens if s.offline) / len(screens),
        "skew": sum(1 for s in screens if s.skew_ms) / len(screens),
        "crash": sum(1 for s in screens if s.crashes) / len(screens),
    }
    assert 0.08 < share["offline"] < 0.16  # short windows 10 %, long ones 2 %
    assert 0.07 < share["skew"] < 0.13 and 0.03 < share["crash"] < 0.07
    skewed = [abs(s.skew_ms) for s in screens if s.skew_ms]
    assert min(skewed) < 60_000 and max(skewed) >= HOUR_MS, "seconds, minutes and hours"
    assert all(not s.ntp for s in screens if s.skew_ms), "a bad clock has no time server"


def test_windows_past_the_offline_limit_come_only_in_runs_long_enough() -> None:
    def longest(options: FleetOptions) -> int:
        windows = [w for s in build(options, 600) for w in s.offline]
        return max((end - start for start, end in windows), default=0)

    assert longest(replace(OPTIONS, faults=Faults(long_offline=1.0))) >= LONG_OFFLINE_MS[0]
    short = replace(OPTIONS, duration_ms=2 * HOUR_MS, faults=Faults(long_offline=1.0))
    assert longest(short) < 4 * HOUR_MS


def test_no_faults_means_none_at_all() -> None:
    screens = build(replace(OPTIONS, faults=Faults.none()), 600)
    assert not any(s.offline or s.skew_ms or s.crashes or s.step for s in screens)
    assert all(i.passes == 1 for s in screens for i in s.playlist)


def test_workers_follow_the_descriptor_limit() -> None:
    assert workers_for(100, 20_000) == 1
    assert workers_for(10_000, 20_000) == 3
    assert workers_for(10_000, 20_000, wanted=2) == 2
