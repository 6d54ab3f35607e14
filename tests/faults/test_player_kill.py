"""Players SIGKILLed mid-play again and again lose nothing and count nothing twice.

Several real `playproof player` processes (data folders `DIR/<device_id>/`, as
`playproof reconcile --devices-dir DIR` reads them) deliver to a real service.
Each is SIGKILLed at seeded random moments while a play is under way, and
started again on the same data folder; the journal closes the killed play as
`device_restart` and the sequence resumes. At the end every player is stopped
with SIGTERM (it drains) and `playproof reconcile` is the oracle: nothing lost,
nothing counted twice; each kill is exactly one `device_restart` partial in the
service; each journal's sequence is gapless in the service from 1 to its last,
with no gap in the service's tracking; and no journal changed identity.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playproof.device.ledger import read_ledger
from tests.device.helpers import PlayerProcess, item, write_playlist
from tests.reliability import ROUNDS, Tally
from tests.support import ServerProcess, provision

SEED = 20_240_612
PLAYERS = 4
KILLS = 3 * ROUNDS  # per player
# Items of 2 to 3 s; a kill comes 0.05 to 1.2 s after a play started: within it.
PLAYLIST = [item(2000, "cnt-1"), item(3000, "cnt-2"), item(2500, "cnt-3")]
KILL_AFTER_S = (0.05, 1.2)
RUNNING = re.compile(r"player running: device (\S+) journal (\S+) next seq (\d+)")
STARTED = re.compile(r"play started seq=(\d+)")
CLOSED = re.compile(r"closed 1 play\(s\) left open by a crash as device_restart: seq (\d+)$")


@dataclass
class Life:
    """What one device went through: its journals, the plays killed, and its starts."""

    device_id: str
    journals: set[str] = field(default_factory=set)
    killed: list[int] = field(default_factory=list)  # the seqs closed as device_restart
    resumed: list[tuple[int, int]] = field(default_factory=list)  # (closed seq, next seq)


def start(args: list[str], life: Life, after_kill: bool) -> PlayerProcess:
    """Start the player; note its journal and, after a kill, the play it closed."""
    player = PlayerProcess(*args)
    try:
        running = RUNNING.search(player.wait_for("player running:"))
        assert running is not None, player.log()
        life.journals.add(running.group(2))
        if after_kill:  # the killed play comes back, closed as device_restart
            closed = CLOSED.search(player.wait_for("left open by a crash").rstrip())
            assert closed is not None, player.log()
            life.killed.append(int(closed.group(1)))
            life.resumed.append((int(closed.group(1)), int(running.group(3))))
    except BaseException:
        player.ensure_dead()
        raise
    return player


def live(device_id: str, args: list[str], seed: int) -> Life:
    """Kill the player mid-play KILLS times, then stop it with SIGTERM; what happened."""
    rng = random.Random(seed)
    life = Life(device_id)
    for kill in range(KILLS):
        player = start(args, life, after_kill=kill > 0)
        try:
            first = STARTED.search(player.wait_for("play started"))
            assert first is not None
            # Mid-play: in the first or the second play of this life.
            player.wait_for(f"play started seq={int(first.group(1)) + rng.randint(0, 1)} ")
            time.sleep(rng.uniform(*KILL_AFTER_S))
            player.kill()
        finally:
            player.ensure_dead()
    player = start(args, life, after_kill=True)
    try:
        player.wait_for("play ended")
        code = player.terminate()
        assert code == 0, player.log()
        assert "everything delivered" in player.log(), player.log()
    finally:
        player.ensure_dead()
    return life


def player_args(
    url: str, token: str, device_id: str, data_dir: Path, playlist: Path, seed: int
) -> list[str]:
    """`playproof player` arguments for one screen, its checkpoints frequent."""
    return [
        "--server", url, "--token", token, "--device-id", device_id, "--store-id", "store-1",
        "--data-dir", str(data_dir), "--playlist", str(playlist), "--no-screenshots",
        "--seed", str(seed), "--checkpoint-interval", "0.2",
    ]  # fmt: skip


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_players_sigkilled_mid_play_lose_nothing_and_count_nothing_twice(
    tmp_path: Path, tally: Tally
) -> None:
    db, devices_dir = tmp_path / "playproof.db", tmp_path / "fleet"
    db_url, report_path = f"sqlite:///{db}", tmp_path / "report.json"
    playlist = write_playlist(tmp_path / "playlist.json", PLAYLIST)
    ids = [f"scr-kill-{i}" for i in range(1, PLAYERS + 1)]
    with ServerProcess(db_url) as server:
        commands = {
            d: player_args(server.url, provision(db_url, d), d, devices_dir / d, playlist, SEED + i)
            for i, d in enumerate(ids)
        }
        with ThreadPoolExecutor(PLAYERS) as pool:
            futures = {d: pool.submit(live, d, commands[d], SEED + i) for i, d in enumerate(ids)}
            lives = {d: future.result() for d, future in futures.items()}
        server.stop()
    cmd = [sys.executable, "-m", "playproof", "reconcile", "--db", db_url]
    done = subprocess.run(
        [*cmd, "--devices-dir", str(devices_dir), "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},  # a readable report in a failure's message
    )
    tally.faults = sum(len(life.killed) for life in lives.values())
    context = f"seed {SEED}\n{done.stdout}\n{done.stderr}"
    assert report_path.exists(), context
    report = json.loads(report_path.read_text())
    tally.add_reconciliation(report)
    total = report["total"]

    assert done.returncode == 0 and "CLEAN" in done.stdout, context
    assert (total["lost"], total["double"], report["errors"]) == (0, 0, []), context
    assert (total["queued"], total["open"], total["evicted"]) == (0, 0, 0), context
    assert total["accepted"] == total["recorded"] > 0, context
    for life in lives.values():
        check_device(db, devices_dir, life)


def check_device(db: Path, devices_dir: Path, life: Life) -> None:
    """One device: its kills, its sequence and its journal, in the service and on the device."""
    where = f"{life.device_id} (seed {SEED}), kills closed seqs {life.killed}"
    ledger = read_ledger(devices_dir / life.device_id / "journal.db")
    assert life.journals == {ledger.journal_id}, f"the journal changed identity: {where}"
    assert len(life.killed) == KILLS, where
    assert all(nxt == seq + 1 for seq, nxt in life.resumed), f"resumed {life.resumed}: {where}"
    rows = query(
        db,
        "SELECT journal_id, seq, end_reason, status FROM impressions WHERE device_id = ? "
        "ORDER BY seq",
        life.device_id,
    )
    assert {r[0] for r in rows} == {ledger.journal_id}, where
    assert [r[1] for r in rows] == list(range(1, ledger.last_seq + 1)), f"not gapless: {where}"
    restarts = [(seq, status) for _, seq, reason, status in rows if reason == "device_restart"]
    assert restarts == [(seq, "partial") for seq in sorted(life.killed)], where
    tracked = query(
        db, "SELECT journal_id, high_water FROM journals WHERE device_id = ?", life.device_id
    )
    assert tracked == [(ledger.journal_id, ledger.last_seq)], where
    gaps = query(db, "SELECT first_seq, last_seq FROM gaps WHERE device_id = ?", life.device_id)
    assert gaps == [], f"the service tracks gaps {gaps}: {where}"
