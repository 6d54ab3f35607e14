"""A device whose disk fills while offline keeps recording, evicting oldest first, and says so."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.device.helpers import PlayerProcess
from tests.faults.proxy import FaultProxy
from tests.reliability import Tally
from tests.support import ServerProcess, provision

DEVICE = "scr-disk"
# At --speed 100 with 1 s items the player records 100 plays a real second, so
# "drained" means a queue within a second of plays, not an empty one.
CAUGHT_UP = 100
PLAYLIST = {
    "items": [
        {
            "campaign_id": "cmp-1",
            "ad_group_id": "ag-1",
            "content_id": "cnt-1",
            "supplier_id": "sup-1",
            "duration_ms": 1000,
        }
    ]
}


def player_args(url: str, token: str, data_dir: Path, playlist: Path) -> list[str]:
    """A fast player with a journal capacity the disk runs out before."""
    return [
        "--server", url, "--token", token, "--device-id", DEVICE, "--store-id", "store-1",
        "--data-dir", str(data_dir), "--playlist", str(playlist), "--speed", "100",
        "--no-screenshots", "--capacity", "1000000", "--log-level", "info",
    ]  # fmt: skip


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


def query(db_url: str, sql: str) -> list[tuple[int, ...]]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return [tuple(r) for r in conn.execute(sql, (DEVICE,))]


def caught_up(db_url: str) -> bool:
    """The device reports a queue no deeper than a second of its plays (it keeps playing)."""
    rows = query(db_url, "SELECT payload FROM device_status WHERE device_id = ?")
    return bool(rows) and json.loads(str(rows[0][0])).get("queue_depth", CAUGHT_UP + 1) <= CAUGHT_UP


def test_a_full_device_disk_evicts_oldest_first_reports_it_and_never_crash_loops(
    small_disk: Path,
    db_url: str,
    tmp_path: Path,
    tally: Tally,
) -> None:
    token = provision(db_url, DEVICE)
    playlist = tmp_path / "playlist.json"
    playlist.write_text(json.dumps(PLAYLIST))
    with ServerProcess(db_url) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with FaultProxy(host, int(port)) as proxy:
            proxy.set_mode("drop")  # offline: the journal can only grow
            player = PlayerProcess(*player_args(proxy.url, token, small_disk / "device", playlist))
            try:
                player.wait_for("evicting the oldest", 150)
                time.sleep(3)  # keep recording on a full disk for a while
                assert player.proc.poll() is None, "the player must not die on a full disk"
                proxy.set_mode("pass")  # back online: drain and report
                assert wait_for(
                    lambda: query(db_url, "SELECT 1 FROM evictions WHERE device_id = ?"), 60
                )
                assert wait_for(lambda: caught_up(db_url), 120)
                assert player.proc.poll() is None
            finally:
                code = player.terminate(30)
    log = player.log()
    assert code == 0, log[-4000:]
    assert "NOT RECORDED" not in log, "every play must be recorded while the disk is full"
    evicted = {
        s
        for a, b in query(db_url, "SELECT first_seq, last_seq FROM evictions WHERE device_id = ?")
        for s in range(a, b + 1)
    }
    stored = {r[0] for r in query(db_url, "SELECT seq FROM impressions WHERE device_id = ?")}
    assert evicted
    assert not stored & evicted, "an evicted record cannot also be stored"
    assert min(evicted) == 1, "the oldest go first"
    missing = set(range(1, max(stored | evicted) + 1)) - stored - evicted
    tally.faults, tally.records = 1, max(stored | evicted)
    tally.lost, tally.notes["evicted"] = len(missing), len(evicted)
    assert not missing, f"sequences neither stored nor reported evicted: {sorted(missing)[:20]}"
