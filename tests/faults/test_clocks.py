"""A device's clocks misbehaving: its wall clock set mid-play, and hours spent offline.

Both scenarios run the real device SDK on injected raw clocks (`SteeredTime`: the real
clocks, plus what the test adds: `step` moves the wall clock alone, as someone setting
it would; `advance` moves both, as time passing would) against a real `playproof
serve`, and end with the reconciliation oracle (`playproof reconcile`).

1. The wall clock is set forward, then back, each time in the middle of a play, by more
   than the service's skew limit. The SDK sees each step against the monotonic clock
   and takes it back: every duration is the monotonic time played, a stepped play
   ends at start + duration (so, by the README's policy, there is no
   `duration_mismatch` to flag), timestamps stay on true time, and every play is
   accepted `valid` with no flag at all (NTP-synced), nothing lost.
2. A device goes offline (the fault proxy drops every connection) and plays on past the
   protocol's 4 h limit. Hours pass on injected clocks, never by waiting: the device's
   raw clocks jump together, and the service is started again on a simulated clock as
   far on. Back online, the plays older than 4 h on the device's own clock
   (`sent_at - end_ts`) are rejected `stale`, each kept in the service's rejects with
   its reason and raw record; the play a minute under the limit is accepted, as are the
   newer ones; nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from playproof.device import Clock, Content, Device, NtpServer, Play
from playproof.fleet.ntp import SimNtpServer
from playproof.fleet.simclock import real_clock
from playproof.protocol import Record
from playproof.rules import DEFAULT_POLICY
from tests.device.helpers import SteeredTime, device_config, impressions, query
from tests.faults.proxy import FaultProxy
from tests.reliability import ROUNDS, Tally
from tests.support import ServerProcess, now_ms, provision

SEED = 20_240_624
MINUTE_S = 60.0
HOUR_S = 3600.0
LIMIT_MS = DEFAULT_POLICY.offline_limit_ms  # 4 h
LIMIT_S = LIMIT_MS / 1000
MINUTE_MS = 60_000
# Every step is past the service's clock_skew reject band (30 min): a step the SDK
# missed would be seen at once (rejected records, or a start after its end).
STEP_S = (31 * MINUTE_S, 3 * HOUR_S)
# How far a corrected timestamp may be from true time: NTP on loopback is within a
# millisecond or two; this only says "true time, not hours off".
TRUE_TIME_MS = 1000
SHORT = Content(
    campaign_id="cmp-1", ad_group_id="ag-1", content_id="cnt-short", supplier_id="sup-1",
    expected_ms=1000,
)  # fmt: skip
SPOT = Content(
    campaign_id="cmp-1", ad_group_id="ag-1", content_id="cnt-spot", supplier_id="sup-1",
    expected_ms=15_000,
)  # fmt: skip


def reconcile(db_url: str, devices: Path, out: Path) -> tuple[int, str, dict[str, Any]]:
    """`playproof reconcile` as a real command: exit code, output and JSON report."""
    cmd = [sys.executable, "-m", "playproof", "reconcile", "--db", db_url]
    cmd += ["--devices-dir", str(devices), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    report = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, done.stdout + done.stderr, report


def rejects(db_url: str, device_id: str) -> list[dict[str, Any]]:
    """The service's audit rows of the device's rejected records, by sequence."""
    rows = query(
        db_url,
        "SELECT seq, checksum, reason, detail, raw, times, sent_at FROM rejects "
        "WHERE device_id = ? ORDER BY seq",
        device_id,
    )
    keys = ("seq", "checksum", "reason", "detail", "raw", "times", "sent_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


# --- 1. the wall clock set mid-play ---------------------------------------------


@dataclass
class Played:
    """A sealed record and what the test saw around it on the real clocks."""

    record: Record
    stepped: bool
    duration_bounds: tuple[int, int]  # monotonic ms the play lasted, at least and at most
    started_between: tuple[int, int]  # true UTC ms around the start call


async def play_one(device: Device, steered: SteeredTime, step_s: float = 0.0) -> Played:
    """A one-second play; with `step_s`, the wall clock is set by that much halfway."""
    m0, t0 = time.monotonic(), now_ms()
    play = await device.start(SHORT)
    m1, t1 = time.monotonic(), now_ms()
    await asyncio.sleep(0.5)
    if step_s:
        steered.step(step_s)
    await asyncio.sleep(0.5)
    m2 = time.monotonic()
    record = await play.end("completed")
    m3 = time.monotonic()
    low, high = int((m2 - m1) * 1000) - 1, int((m3 - m0) * 1000) + 1
    return Played(record, bool(step_s), (low, high), (t0, t1))


async def test_a_wall_clock_set_forward_and_back_mid_play_leaves_every_play_whole_and_accepted(
    db_url: str, tmp_path: Path, tally: Tally, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    devices = tmp_path / "devices"
    token = provision(db_url, "scr-steps")
    ntp = await SimNtpServer(real_clock()).start()  # true time, on loopback
    steered = SteeredTime()
    clock = Clock(
        [NtpServer("127.0.0.1", ntp.port)], wall=steered.wall, monotonic=steered.monotonic
    )
    played: list[Played] = []
    with ServerProcess(db_url) as server:
        config = device_config(devices / "scr-steps", server.url, token, device_id="scr-steps")
        device = await Device.open(config, capture=None, clock=clock)
        try:
            for _ in range(ROUNDS):
                played.append(await play_one(device, steered))
                played.append(await play_one(device, steered, +rng.uniform(*STEP_S)))
                played.append(await play_one(device, steered))
                played.append(await play_one(device, steered, -rng.uniform(*STEP_S)))
            played.append(await play_one(device, steered))
            assert device.uplink is not None
            flushed = await device.uplink.drain(20)
            steps, acks = clock.steps, dict(device.uplink.results)
            status = await device.status()
        finally:
            await device.close(flush_timeout_s=5)
            ntp.close()
        tally.faults = 2 * ROUNDS
        assert steps == 2 * ROUNDS, "every step seen against the monotonic clock"
        assert status["clock_source"] == "ntp" and status["queue_depth"] == 0, status
        assert flushed, "everything delivered"
        # Corrected time never moved: the service's skew did not either, so nothing held.
        interrupted = [r.message for r in caplog.records if "delivery interrupted" in r.message]
        assert interrupted == [], "a compensated step is no reason to hold records back"
        assert acks == {"accepted": len(played)}, acks

        for p in played:
            r = p.record
            low, high = p.duration_bounds
            assert low <= r.duration_ms <= high, f"seq {r.seq}: duration not the monotonic time"
            start, end = p.started_between
            assert start - TRUE_TIME_MS <= r.start_ts <= end + TRUE_TIME_MS, (
                f"seq {r.seq}: start_ts {r.start_ts} is not true time ({start}..{end})"
            )
            assert r.clock_synced
            if p.stepped:
                assert r.end_ts == r.start_ts + r.duration_ms, f"seq {r.seq}: stretched by the step"
            else:
                assert abs(r.end_ts - r.start_ts - r.duration_ms) <= 50, f"seq {r.seq}"

        stored = {row["seq"]: row for row in impressions(db_url, "scr-steps")}
        assert sorted(stored) == [p.record.seq for p in played]
        for p in played:
            row = stored[p.record.seq]
            assert row["checksum"] == p.record.checksum
            # Signed (version 2) by default, with no panel source: `panel_unknown` (-20).
            assert (row["status"], row["flags"], row["quality"]) == (
                "valid", "panel_unknown", 80
            ), row  # fmt: skip
            assert (row["start_ts"], row["end_ts"]) == (p.record.start_ts, p.record.end_ts)
        assert rejects(db_url, "scr-steps") == []
        assert status["clock_steps"] == 2 * ROUNDS, "the steps are counted in status"

        code, out, report = reconcile(db_url, devices, tmp_path / "reconcile.json")
        tally.add_reconciliation(report)
        assert code == 0 and "CLEAN" in out, out
        total = report["total"]
        assert (total["lost"], total["double"], total["queued"]) == (0, 0, 0)
        assert total["valid"] == total["recorded"] == len(played)


# --- 2. offline past the 4 h limit ----------------------------------------------


@dataclass
class Outage:
    """One round's plays, by what the service must answer."""

    online: Record  # delivered before the outage
    stale: list[Record]  # ended more than 4 h before they could be sent: the last a minute over
    fresh: list[Record]  # ended less than 4 h before: the first a minute under, then recent ones


async def spot(device: Device, steered: SteeredTime) -> Record:
    """A 15 s play, its 15 s passing on the device's clocks at once."""
    play: Play = await device.start(SPOT)
    steered.advance(SPOT.expected_ms / 1000)
    return await play.end("completed")


async def play_offline(
    device: Device, steered: SteeredTime
) -> tuple[list[Record], list[Record], float]:
    """Plays that end about 4 h 30 min, 4 h + 1 min and 4 h - 1 min, then a few minutes,
    before the device comes back: (stale ones, fresh ones, the `jump` it comes back at)."""
    old = [await spot(device, steered) for _ in range(3)]
    steered.advance(29 * MINUTE_S)
    just_over = await spot(device, steered)
    steered.advance(2 * MINUTE_S - SPOT.expected_ms / 1000)
    just_under = await spot(device, steered)
    # Back when just_under is a minute short of the limit (plus the real seconds the
    # reconnection takes): just_over is then a minute past it.
    back = steered.jump + LIMIT_S - MINUTE_S
    steered.advance(back - steered.jump - 5 * MINUTE_S)
    recent = [await spot(device, steered) for _ in range(2)]
    return [*old, just_over], [just_under, *recent], back


def sim_clock_at(jump_s: float) -> list[str]:
    """`--sim-clock` for a service whose time is `jump_s` ahead of real time, as the device's."""
    anchor = now_ms()
    return ["--sim-clock", f"speed=1,anchor={anchor},epoch={anchor + round(jump_s * 1000)}"]


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for `condition` (a deadline, not a speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def stored_seqs(db_url: str, device_id: str) -> set[int]:
    """Sequences the service holds as impressions for the device."""
    rows = query(db_url, "SELECT seq FROM impressions WHERE device_id = ?", device_id)
    return {int(seq) for (seq,) in rows}


async def test_plays_held_offline_past_4_hours_are_rejected_stale_and_audited_none_lost(
    db_url: str, tmp_path: Path, tally: Tally
) -> None:
    devices = tmp_path / "devices"
    token = provision(db_url, "scr-offline")
    steered = SteeredTime()
    clock = Clock(wall=steered.wall, monotonic=steered.monotonic)  # no NTP: it is offline
    outages: list[Outage] = []
    server = ServerProcess(db_url)  # on the real clock, as the device's is at first
    server.start()
    host, port = server.url.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port)).start()
    config = device_config(devices / "scr-offline", proxy.url, token, device_id="scr-offline")
    device = await Device.open(config, capture=None, clock=clock)
    assert device.uplink is not None
    uplink = device.uplink
    try:
        for _ in range(ROUNDS):
            first = await device.start(SHORT)
            await asyncio.sleep(1.0)
            online = await first.end("completed")
            assert await uplink.drain(20), "delivered while online"
            proxy.set_mode("drop")
            await until(lambda: uplink.state == "offline", "the device to see the network gone")
            stale, fresh, back = await play_offline(device, steered)
            outage = Outage(online, stale, fresh)
            refused = proxy.bitten["drop"]
            await until(lambda n=refused: proxy.bitten["drop"] > n, "the device to try, and fail")
            assert not stored_seqs(db_url, "scr-offline") & {r.seq for r in outage.fresh}
            # Hours have passed for the service too: it starts again that far on.
            server.stop()
            server = ServerProcess(db_url, *sim_clock_at(back))
            server.start()
            proxy.upstream = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            steered.advance(back - steered.jump)
            status = await device.status()
            assert status["stale_queued"] == len(outage.stale), status
            assert status["queue_depth"] == len(outage.stale) + len(outage.fresh), status
            proxy.set_mode("pass")
            assert await uplink.drain(30), "everything answered once back online"
            outages.append(outage)
        acks, rejected = dict(uplink.results), dict(uplink.rejected)
    finally:
        await device.close(flush_timeout_s=5)
        proxy.stop()
        server.kill()
    tally.faults = ROUNDS
    assert rejected == {"stale": 4 * ROUNDS}, rejected
    assert acks == {"accepted": 4 * ROUNDS, "rejected": 4 * ROUNDS}, acks

    stored = {row["seq"]: row for row in impressions(db_url, "scr-offline")}
    audit = {row["seq"]: row for row in rejects(db_url, "scr-offline")}
    for outage in outages:
        for r in [outage.online, *outage.fresh]:
            row = stored.get(r.seq)
            assert row is not None, f"seq {r.seq} ({r.end_ts}) accepted, stored"
            assert (row["checksum"], row["status"], row["flags"]) == (
                r.checksum, "valid", "clock_unsynced,panel_unknown"
            ), row  # fmt: skip
        for r in outage.stale:
            assert r.seq not in stored, f"seq {r.seq} is stale, not counted"
            row = audit.get(r.seq)
            assert row is not None, f"seq {r.seq}: rejected, so it must be kept for audit"
            assert (row["reason"], row["checksum"], row["times"]) == ("stale", r.checksum, 1)
            raw = json.loads(row["raw"])
            assert (raw["seq"], raw["end_ts"], raw["checksum"]) == (r.seq, r.end_ts, r.checksum)
        # The boundary, as the service measured it (`sent_at - end_ts`, the device's clock):
        # a minute and a little over the limit was stale, a minute and a little under was not.
        over, under = outage.stale[-1], outage.fresh[0]
        over_age = audit[over.seq]["sent_at"] - over.end_ts
        under_age = stored[under.seq]["received_at"] + stored[under.seq]["skew_ms"] - under.end_ts
        assert LIMIT_MS < over_age < LIMIT_MS + 2 * MINUTE_MS, over_age - LIMIT_MS
        assert LIMIT_MS - 2 * MINUTE_MS < under_age < LIMIT_MS, under_age - LIMIT_MS
    assert set(audit) == {r.seq for o in outages for r in o.stale}, "nothing else rejected"

    code, out, report = reconcile(db_url, devices, tmp_path / "reconcile.json")
    tally.add_reconciliation(report)
    assert code == 0 and "CLEAN" in out, out
    total = report["total"]
    assert (total["lost"], total["double"], total["queued"]) == (0, 0, 0)
    assert total["rejected"] == {"stale": 4 * ROUNDS}
    assert total["accepted"] == 4 * ROUNDS and total["recorded"] == 8 * ROUNDS
