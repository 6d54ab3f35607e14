"""`playproof player` as a real process: SIGKILL, SIGTERM, skips, speed, NTP, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from playproof.device import Device
from playproof.device.clock import NtpServer
from playproof.device.journal import JOURNAL_FILE
from playproof.device.player import load_playlist, require_full_sync, run_player
from playproof.errors import JournalError
from tests.device.helpers import (
    PlayerProcess,
    Service,
    device_config,
    free_udp_port,
    impressions,
    item,
    write_playlist,
)
from tests.support import provision


def player_args(svc: Service, token: str, data_dir: Path, playlist: Path, *extra: str) -> list[str]:
    return [
        "--server",
        svc.url,
        "--token",
        token,
        "--device-id",
        "scr-1",
        "--store-id",
        "store-1",
        "--data-dir",
        str(data_dir),
        "--playlist",
        str(playlist),
        "--no-screenshots",
        "--seed",
        "7",
        *extra,
    ]


def wait_for_rows(db_url: str, count: int, timeout: float = 30.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = impressions(db_url, "scr-1")
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_sigkill_mid_play_comes_back_as_device_restart_with_no_gap(
    service: Service, data_dir: Path, tmp_path: Path
) -> None:
    token = provision(service.db_url, "scr-1")
    playlist = write_playlist(tmp_path / "p.json", [item(3000)])
    args = player_args(service, token, data_dir, playlist, "--checkpoint-interval", "0.2")
    first = PlayerProcess(*args)
    try:
        first.wait_for("play started seq=2")
        time.sleep(1.0)  # mid-play: the item lasts 3 s
        first.kill()
        second = PlayerProcess(*args)
        try:
            second.wait_for("closed 1 play(s) left open by a crash as device_restart: seq 2")
            second.wait_for("play ended seq=3")
            assert second.terminate() == 0, second.log()
        finally:
            second.ensure_dead()
    finally:
        first.ensure_dead()
    rows = wait_for_rows(service.db_url, 4)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4], "resumed after the highest, no gap"
    assert len({r["journal_id"] for r in rows}) == 1
    killed = rows[1]
    assert (killed["end_reason"], killed["status"]) == ("device_restart", "partial")
    assert 0 < killed["duration_ms"] < 3000
    assert killed["end_ts"] >= killed["start_ts"]
    assert [r["end_reason"] for r in rows] == [
        "completed",
        "device_restart",
        "completed",
        "interrupted",
    ]


def test_sigterm_ends_the_play_as_interrupted_flushes_and_exits_0(
    service: Service, data_dir: Path, tmp_path: Path
) -> None:
    token = provision(service.db_url, "scr-1")
    playlist = write_playlist(tmp_path / "p.json", [item(20_000), item(30_000, "cnt-2")])
    player = PlayerProcess(*player_args(service, token, data_dir, playlist, "--speed", "10"))
    try:
        player.wait_for("play started seq=2")
        time.sleep(0.3)
        assert player.terminate() == 0, player.log()
    finally:
        player.ensure_dead()
    assert "everything delivered" in player.log()
    rows = impressions(service.db_url, "scr-1")
    assert [(r["seq"], r["end_reason"]) for r in rows] == [(1, "completed"), (2, "interrupted")]
    # At 10x a 20 s item plays 2 s and is recorded as a 2 s item: times stay real.
    assert (rows[0]["expected_ms"], rows[1]["expected_ms"]) == (2_000, 3_000)
    assert 2_000 <= rows[0]["duration_ms"] < 10_000, "2 s at 10x, not 20 s"
    assert rows[1]["duration_ms"] < 3_000


def test_skips_and_a_fixed_number_of_plays(
    service: Service, data_dir: Path, tmp_path: Path
) -> None:
    token = provision(service.db_url, "scr-1")
    playlist = write_playlist(tmp_path / "p.json", [item(400, skip_probability=1.0)])
    args = player_args(service, token, data_dir, playlist, "--max-plays", "3")
    player = PlayerProcess(*args)
    try:
        assert player.wait() == 0, player.log()
    finally:
        player.ensure_dead()
    rows = impressions(service.db_url, "scr-1")
    assert [r["end_reason"] for r in rows] == ["skipped"] * 3
    assert all(r["duration_ms"] < 400 and r["status"] == "partial" for r in rows)


def test_ntp_servers_make_records_clock_synced_and_a_dead_one_is_reported(
    service: Service, data_dir: Path, tmp_path: Path, chrony: NtpServer
) -> None:
    token = provision(service.db_url, "scr-1")
    playlist = write_playlist(tmp_path / "p.json", [item(50)])
    dead = f"127.0.0.1:{free_udp_port()}"
    args = player_args(service, token, data_dir, playlist, "--max-plays", "2")
    player = PlayerProcess(*args, "--ntp", dead, "--ntp", str(chrony))
    assert player.wait() == 0, player.log()
    rows = impressions(service.db_url, "scr-1")
    assert [r["clock_synced"] for r in rows] == [1, 1]
    alone = PlayerProcess(*args, "--ntp", dead)
    assert alone.wait() == 0, alone.log()
    assert "no NTP server answered" in alone.log() and dead in alone.log()
    rows = impressions(service.db_url, "scr-1")
    assert [r["clock_synced"] for r in rows] == [1, 1, 0, 0]


def test_a_corrupt_journal_is_moved_aside_loudly_and_recording_goes_on(
    service: Service, data_dir: Path, tmp_path: Path
) -> None:
    token = provision(service.db_url, "scr-1")
    playlist = write_playlist(tmp_path / "p.json", [item(50)])
    args = player_args(service, token, data_dir, playlist, "--max-plays", "1")
    assert PlayerProcess(*args).wait() == 0
    (data_dir / "journal.db").write_bytes(b"\x00garbage" * 512)
    again = PlayerProcess(*args)
    assert again.wait() == 0, again.log()
    assert "ERROR" in again.log() and "corrupt" in again.log()
    assert list(data_dir.glob("journal.corrupt-*"))
    rows = impressions(service.db_url, "scr-1")
    assert len(rows) == 2 and len({r["journal_id"] for r in rows}) == 2
    assert [r["seq"] for r in rows if r["journal_id"] != rows[0]["journal_id"]] == [1]


@pytest.mark.parametrize(
    ("playlist_text", "message"),
    [
        ('{"items": []}', "invalid"),
        ('{"items": [{"campaign_id": "c"}]}', "invalid"),
        (
            '{"items": [{"campaign_id": "c", "ad_group_id": "a", "content_id": "x", '
            '"supplier_id": "s", "duration_ms": 10, "color": "red"}]}',
            "color",
        ),
        ("not json", "not JSON"),
    ],
)
def test_a_bad_playlist_is_a_clear_error(tmp_path: Path, playlist_text: str, message: str) -> None:
    playlist = tmp_path / "p.json"
    playlist.write_text(playlist_text)
    svc = Service("sqlite:///unused")
    player = PlayerProcess(*player_args(svc, "t", tmp_path / "device", playlist))
    assert player.wait() == 1
    assert message in " ".join(player.log().split())
    assert not (tmp_path / "device").exists(), "nothing is created before the input is checked"


def test_a_data_folder_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    playlist = write_playlist(tmp_path / "p.json", [item(50)])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    svc = Service("sqlite:///unused")
    player = PlayerProcess(*player_args(svc, "t", blocker, playlist))
    assert player.wait() == 1
    assert "not a folder" in " ".join(player.log().split())
    assert "Traceback" not in player.log()


@pytest.mark.parametrize("mode", ["off", "normal"])
async def test_the_player_refuses_a_journal_without_full_sync(tmp_path: Path, mode: str) -> None:
    """Fast journals are the simulator's; a player would lose plays to a power cut."""
    data_dir = tmp_path / "device"
    playlist = load_playlist(write_playlist(tmp_path / "p.json", [item(50)]))
    config = device_config(data_dir, journal_synchronous=mode)
    with pytest.raises(JournalError, match=f"synchronous=full, got synchronous={mode}"):
        await run_player(config, playlist, capture=None, max_plays=1)
    assert not (data_dir / JOURNAL_FILE).exists(), "refused before anything was written"


async def test_a_device_journal_is_full_sync_as_sqlite_reports_it(tmp_path: Path) -> None:
    """The SDK's default, read on the journal's own connection; the player checks the same."""
    device = await Device.open(device_config(tmp_path / "device"), capture=None)
    try:
        assert device.journal.synchronous == "full"
        require_full_sync(device.journal.synchronous)
    finally:
        await device.close()
    playlist = load_playlist(write_playlist(tmp_path / "p.json", [item(20)]))
    config = device_config(tmp_path / "device")
    assert await run_player(config, playlist, capture=None, max_plays=2) == 2
