"""A fleet behind a faulty network loses nothing and counts nothing twice.

A real `playproof simulate` fleet (a dozen screens, the real device SDK, on a 60x
simulated clock shared with the service, no fault of its own) delivers to a real
`playproof serve` through the fault proxy. While the screens play, the proxy cycles
through the network's faults, each for a few seconds with the link back to `pass` in
between: connections dropped and refused, a WebSocket frame (or a request, or an ack)
reset in the middle, a slow trickle, answers cut after the service committed but
before the ack reached the device, and a black hole (last: the streams caught in it
are given up only when their acks or keepalive pongs are overdue, half a minute on).
Once the cycle is over the fleet is stopped as an operator would (Ctrl-C: stop,
drain) and reconciles.

It must end clean: nothing lost, nothing counted twice, nothing left queued; the
records whose acks were cut must have been sent again and answered `duplicate`
(absorbed, counted once); and every fault must have bitten (the proxy counts what
each did to live traffic, and the screens logged their interrupted deliveries).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.faults.delivery import wait_stored
from tests.faults.proxy import FaultProxy
from tests.reliability import ROUNDS, Tally
from tests.support import ServerProcess

SEED = 20_240_623
SPEED = 60
DEVICES = 12
# The black hole goes last: the next round's `drop` would free its victims early.
CYCLE = ("drop", "reset_mid_frame", "trickle", "cut_before_ack", "stall")
FAULT_S = 4.0  # real seconds each fault lasts
PASS_S = 4.0  # real seconds of a good link after each
EPISODES = ROUNDS * len(CYCLE)
# The fleet is stopped (Ctrl-C) once the cycle is over: the duration only has to outlast it.
DURATION_S = SPEED * (120 + EPISODES * (FAULT_S + PASS_S))
# A stream stuck in the black hole is given up when its acks (30 s) or its keepalive
# pongs are overdue: the drain must outlast that.
DRAIN_S = 90
FLEET = [
    "--devices", str(DEVICES), "--duration", f"{DURATION_S:.0f}s", "--seed", str(SEED),
    "--play-length", "30s..90s", "--no-faults", "--drain", str(DRAIN_S), "--no-live",
]  # fmt: skip
# The whole run is one module fixture, paid by whichever test comes first.
pytestmark = pytest.mark.timeout(300 + 60 * ROUNDS)
# Connections, by the request they open with.
STREAM = "GET /v1/stream"
BATCH = "POST /v1/impressions/batch"


@dataclass
class Run:
    """What the fleet run left: its output, its report, the proxy's counts, the fleet log."""

    done: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    bitten: dict[str, int]
    bitten_on: dict[tuple[str, str], int]
    requests: dict[str, int]
    log: str


def cycle_faults(proxy: FaultProxy) -> None:
    """Each fault of the cycle for FAULT_S, a good link for PASS_S after each, ROUNDS times."""
    for _ in range(ROUNDS):
        for mode in CYCLE:
            proxy.set_mode(mode)
            time.sleep(FAULT_S)
            proxy.set_mode("pass")
            time.sleep(PASS_S)


def stop(fleet: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Ctrl-C (stop, then drain and reconcile), and wait for the fleet's report."""
    fleet.send_signal(signal.SIGINT)
    try:
        out, err = fleet.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        fleet.send_signal(signal.SIGINT)  # a second Ctrl-C skips the drain
        out, err = fleet.communicate(timeout=60)
    return subprocess.CompletedProcess(fleet.args, fleet.returncode, out, err)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("network")
    db, fleet_dir, report = folder / "playproof.db", folder / "fleet", folder / "report.json"
    db_url = f"sqlite:///{db}"
    with ServerProcess(db_url, "--sim-clock", str(SPEED)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with FaultProxy(host, int(port)) as proxy:
            cmd = [
                sys.executable, "-m", "playproof", "simulate", "--server", proxy.url,
                "--db", db_url, "--devices-dir", str(fleet_dir), "--json", str(report), *FLEET,
            ]  # fmt: skip
            fleet = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                wait_stored(db, 2 * DEVICES, f"waiting for delivery (seed {SEED})", fleet)
                cycle_faults(proxy)
                done = stop(fleet, timeout=DRAIN_S + 60)
            finally:
                if fleet.poll() is None:
                    fleet.kill()
                    fleet.wait(10)
            assert report.exists(), done.stdout + done.stderr
            yield Run(
                done=done,
                report=json.loads(report.read_text()),
                bitten=dict(proxy.bitten),
                bitten_on=dict(proxy.bitten_on),
                requests=dict(proxy.requests),
                log=(fleet_dir / "fleet.log").read_text(),
            )


def test_a_fleet_behind_a_faulty_network_loses_nothing_and_counts_nothing_twice(
    run: Run, tally: Tally
) -> None:
    tally.faults = EPISODES
    tally.add_reconciliation(run.report)
    total = run.report["total"]
    assert run.done.returncode == 0, run.done.stdout + run.done.stderr
    assert run.report["ok"] and "CLEAN" in run.done.stdout, run.done.stdout
    assert (total["lost"], total["double"], run.report["errors"]) == (0, 0, [])
    assert (total["queued"], total["open"], total["evicted"]) == (0, 0, 0), "all delivered"
    assert total["accepted"] == total["recorded"] > 10 * DEVICES
    assert total["rejected"] == {} and total["mismatched"] == 0


def test_acks_cut_after_the_commit_come_back_as_duplicates_absorbed(run: Run) -> None:
    assert run.bitten_on.get(("cut_before_ack", STREAM), 0) > 0, run.bitten_on
    assert run.report["total"]["duplicates"] > 0, "a committed record resent, answered duplicate"


def test_every_network_fault_bit_the_fleet(run: Run) -> None:
    for mode in CYCLE:
        assert run.bitten.get(mode, 0) > 0, f"{mode} never touched traffic: {run.bitten}"
    # Past the WebSocket handshake: frames (or acks) cut in the middle, on live streams.
    assert run.bitten_on.get(("reset_mid_frame", STREAM), 0) > 0, run.bitten_on
    # Screens reconnected again and again, and gave up on the stream for HTTP at times.
    assert run.requests.get(STREAM, 0) > ROUNDS * DEVICES, run.requests
    assert run.requests.get(BATCH, 0) > 0, run.requests
    assert run.log.count("delivery interrupted") >= EPISODES, run.log[-2000:]
    # The black hole: streams caught in it were given up (their acks or pongs overdue).
    assert "no ack for frame" in run.log or "keepalive ping timeout" in run.log, run.log[-2000:]
