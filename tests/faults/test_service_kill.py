"""The service SIGKILLed again and again under a delivering fleet loses nothing, doubles nothing.

A real `playproof serve` on SQLite runs on a simulated clock; a real `playproof
simulate` fleet plays and delivers to it. At seeded random moments, each while
records are arriving, the service is SIGKILLed (no shutdown, no flush) and
started again on the same port, database and simulated clock (the full clock
spec, so the new process reads the same simulated time). Once every kill is
done and delivery has resumed, the fleet is stopped as an operator would
(Ctrl-C: stop, drain) and reconciles: nothing lost, nothing counted twice,
nothing left queued, and the service holds exactly what was accepted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

from tests.faults.delivery import stored, wait_stored
from tests.reliability import ROUNDS, Tally
from tests.support import ServerProcess, free_port, now_ms

SEED = 20_240_611
KILLS = 3 * ROUNDS
SPEED = 120
# The fleet is stopped (Ctrl-C) once the kills are done: the duration only has to outlast them.
FLEET = [
    "--devices", "24", "--duration", "24h", "--play-length", "20s..40s", "--no-faults",
    "--drain", "30", "--no-live",
]  # fmt: skip
# Time runs 120x: a screen delivering its backlog after an outage sends many frames a second.
LIMITS = ["--limit", "device_rate=2000", "--limit", "device_burst=4000"]
GAP_S = (1.0, 3.0)  # real seconds of delivery before a kill
DOWN_S = (0.0, 1.5)  # real seconds the service stays dead


def test_service_sigkilled_under_a_delivering_fleet_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, tally: Tally
) -> None:
    rng = random.Random(SEED)
    db, fleet_dir, report_path = tmp_path / "playproof.db", tmp_path / "fleet", tmp_path / "r.json"
    db_url = f"sqlite:///{db}"
    anchor = now_ms()
    clock = ["--sim-clock", f"speed={SPEED},anchor={anchor},epoch={anchor}"]

    def service() -> ServerProcess:
        return ServerProcess(db_url, *clock, *LIMITS, port=port)

    port = free_port()
    server = service()
    server.start()
    cmd = [
        sys.executable, "-m", "playproof", "simulate", "--server", server.url, "--db", db_url,
        "--devices-dir", str(fleet_dir), "--seed", str(SEED), "--json", str(report_path), *FLEET,
    ]  # fmt: skip
    wide = {**os.environ, "COLUMNS": "160"}  # a readable report in a failure's message
    fleet = subprocess.Popen(cmd, stdout=PIPE, stderr=PIPE, text=True, env=wide)
    at_kills: list[tuple[int, int]] = []  # (stored just before the kill, stored once dead)
    try:
        wait_stored(db, 1, f"waiting for the first delivery (seed {SEED})", fleet)
        for kill in range(KILLS):
            time.sleep(rng.uniform(*GAP_S))
            before = stored(db)
            server.kill()
            at_kills.append((before, stored(db)))
            time.sleep(rng.uniform(*DOWN_S))
            server = service()
            server.start()
            wait_stored(
                db, at_kills[-1][1] + 1, f"for delivery after kill {kill + 1} (seed {SEED})", fleet
            )
        fleet.send_signal(signal.SIGINT)  # Ctrl-C: the fleet stops, drains, reconciles
        out, err = fleet.communicate(timeout=180)
        final = stored(db)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait(10)
        server.stop()
    tally.faults = len(at_kills)
    context = f"seed {SEED}, stored before/after each kill {at_kills}\n{out}\n{err}"
    assert report_path.exists(), context
    report = json.loads(report_path.read_text())
    tally.add_reconciliation(report)
    total = report["total"]

    assert fleet.returncode == 0 and "CLEAN" in out, context
    assert (total["lost"], total["double"], report["errors"]) == (0, 0, []), context
    assert (total["queued"], total["open"], total["evicted"]) == (0, 0, 0), context
    assert total["rejected"] == {}, f"a kill must not make the service reject: {context}"
    assert total["accepted"] == total["recorded"] > 0, context
    assert final == total["accepted"], f"the service holds {final}: {context}"
    # Every kill came while records were arriving, and delivery went on after it.
    assert len(at_kills) == KILLS and at_kills[0][0] > 0, context
    marks = [n for pair in at_kills for n in pair] + [final]
    assert all(a < b for a, b in zip(marks[1::2], marks[2::2], strict=False)), context
    cuts = (fleet_dir / "fleet.log").read_text().count("delivery interrupted")
    assert cuts >= KILLS, f"screens saw the service die {cuts} times: {context}"
