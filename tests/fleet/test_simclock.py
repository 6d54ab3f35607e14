"""The simulated clock: one definition, parsed the same everywhere, shown loudly by the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from playproof.errors import ConfigError
from playproof.fleet.simclock import SimClock, from_info, parse, real_clock, service_clock
from tests.support import ServerProcess


def test_simulated_time_runs_speed_times_faster_from_the_epoch_at_the_anchor() -> None:
    clock = SimClock(600, anchor_ms=1_000_000, epoch_ms=5_000_000)
    assert clock.simulated
    assert clock.real_seconds(600_000) == pytest.approx(1.0)
    assert clock.sim_ms(2.0) == pytest.approx(1_200_000)
    now = clock.now_ms()
    # Real time since the anchor, times 600, after the epoch.
    assert now > 5_000_000 + 600 * 1_000_000_000


def test_a_spec_is_a_speed_or_speed_anchor_and_epoch() -> None:
    assert parse("600", now_ms=42) == SimClock(600, 42, 42)
    assert parse("speed=10,anchor=7,epoch=9") == SimClock(10, 7, 9)
    assert parse("speed=2.5,anchor=7") == SimClock(2.5, 7, 7)
    assert parse(SimClock(30, 1, 2).spec()) == SimClock(30, 1, 2)
    for bad in ("", "fast", "speed=0", "speed=-3", "pace=4", "speed=10,anchor=soon"):
        with pytest.raises(ConfigError):
            parse(bad)


def test_the_real_clock_is_not_simulated_and_gives_no_service_arguments() -> None:
    assert not real_clock().simulated
    assert real_clock().info() == {"mode": "real"}
    assert service_clock(None) == {} and service_clock("1") == {}
    args = service_clock("600")
    assert args["clock_info"]["mode"] == "simulated" and args["clock_info"]["speed"] == 600


def test_what_healthz_shows_gives_the_same_clock_back() -> None:
    clock = SimClock(600, 1_000, 2_000)
    assert from_info(clock.info()) == clock
    assert not from_info({"mode": "real"}).simulated
    with pytest.raises(ConfigError):
        from_info({"mode": "simulated", "speed": 600})


def test_a_service_on_a_simulated_clock_says_so_in_healthz_and_its_log(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    with ServerProcess(db, "--sim-clock", "600") as server:
        health = httpx.get(f"{server.url}/healthz").json()
        clock = health["clock"]
        assert (clock["mode"], clock["speed"]) == ("simulated", 600)
        assert clock["now_ms"] >= clock["epoch_ms"]
        assert b"SIMULATED CLOCK" in server.log
    with ServerProcess(db) as server:
        assert "clock" not in httpx.get(f"{server.url}/healthz").json()


def test_a_bad_clock_spec_stops_serve_with_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    cmd = [sys.executable, "-m", "playproof", "serve", "--db", db, "--sim-clock", "fast"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "expected a clock spec" in done.stderr
