"""`playproof player --renderer mpv`: real clips through Debian's mpv under Xvfb, a real service.

Clips are made by ffmpeg (realplayers.py); every play is checked on the service:
stored once, with the end reason mpv's events gave, and with a screenshot of its
own clip (perceptual hash within the verifier's threshold of the clip's reference).
"""

from __future__ import annotations

import os
import re
import signal
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from playproof.imaging import DEFAULT_MATCH_THRESHOLD
from tests.device.conftest import require_program
from tests.device.helpers import PlayerProcess, item, write_playlist
from tests.device.realplayers import (
    book,
    distance,
    make_clip,
    make_picture,
    make_references,
    wait_stored,
)
from tests.server.reporting import operator_token
from tests.server.test_verification import wait_decided
from tests.support import ServerProcess, provision

CLIP_MS = 2000


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[bytes]]]:
    """Three contents' clips and their reference images, told apart by their hashes."""
    require_program("mpv", "mpv")
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for index, content_id in enumerate(("cnt-a", "cnt-b", "cnt-c")):
        clip = make_clip(folder, content_id, index, CLIP_MS / 1000)
        made[content_id] = (clip, make_references(clip))
    for (_, (_, one)), (_, (_, other)) in combinations(made.items(), 2):
        for frame in one:  # the generator tells contents apart
            assert distance(frame, other) > DEFAULT_MATCH_THRESHOLD
    return made


@pytest.fixture
def screen(xvfb: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Xvfb display mpv draws on (player processes inherit it)."""
    monkeypatch.setenv("DISPLAY", xvfb)
    return xvfb


def _player(
    server: ServerProcess, token: str, device: str, data: Path, playlist: Path, *extra: str
):
    return PlayerProcess(
        "--server", server.url, "--token", token, "--device-id", device, "--store-id", "store-1",
        "--data-dir", str(data), "--playlist", str(playlist), "--renderer", "mpv",
        "--mpv-arg=--ao=null", *extra,
    )  # fmt: skip


def _local_screenshot(data: Path, sha: str) -> bytes:
    for folder in ("pending", "sent"):
        path = data / "screenshots" / folder / f"{sha}.png"
        if path.exists():
            return path.read_bytes()
    raise AssertionError(f"screenshot {sha} is not in {data}")


def _own_clip(row: dict[str, Any], data: Path, clips: dict[str, tuple[Path, list[bytes]]]) -> int:
    assert row["screenshot_sha256"], f"play {row['seq']} has no screenshot"
    assert 0.4 * row["expected_ms"] <= row["screenshot_at_ms"] <= 0.6 * row["expected_ms"] + 100
    return distance(_local_screenshot(data, row["screenshot_sha256"]), clips[row["content_id"]][1])


def test_clips_through_mpv_are_completed_skipped_or_error_each_once_with_its_own_frame(
    server: ServerProcess, clips: dict[str, tuple[Path, list[bytes]]], screen: str, tmp_path: Path
) -> None:
    token = provision(server.db_url, "scr-mpv", "store-1")
    data = tmp_path / "device"
    picture = make_picture(tmp_path, "cnt-d", 3)
    references = {**clips, "cnt-d": (picture, [picture.read_bytes()])}
    playlist = write_playlist(
        tmp_path / "playlist.json",
        [
            item(CLIP_MS, "cnt-a", media=str(clips["cnt-a"][0])),
            item(CLIP_MS, "cnt-b", media=str(clips["cnt-b"][0]), skip_probability=1.0),
            item(CLIP_MS, "cnt-x", media="no-such-clip.webm"),
            item(CLIP_MS, "cnt-c", media=str(clips["cnt-c"][0])),
            item(CLIP_MS, "cnt-d", media=picture.name),  # a still, relative to the playlist
        ],
    )
    player = _player(server, token, "scr-mpv", data, playlist, "--max-plays", "5", "--seed", "3")
    try:
        assert player.wait(60) == 0, player.log()
    finally:
        player.ensure_dead()
    rows = wait_stored(server.db_url, "scr-mpv", 5)
    assert [(r["seq"], r["content_id"], r["end_reason"]) for r in rows] == [
        (1, "cnt-a", "completed"),
        (2, "cnt-b", "skipped"),
        (3, "cnt-x", "error"),
        (4, "cnt-c", "completed"),
        (5, "cnt-d", "completed"),
    ]
    assert "mpv could not play" in player.log()
    assert [r["status"] for r in rows if r["end_reason"] == "completed"] == ["valid"] * 3
    assert rows[2]["status"] != "valid"
    for row in (rows[0], rows[3], rows[4]):
        assert _own_clip(row, data, references) <= DEFAULT_MATCH_THRESHOLD


def test_mpv_killed_mid_play_is_restarted_the_player_killed_leaves_device_restart(
    server: ServerProcess, clips: dict[str, tuple[Path, list[bytes]]], screen: str, tmp_path: Path
) -> None:
    token = provision(server.db_url, "scr-mpv-kill", "store-1")
    data = tmp_path / "device"
    playlist = write_playlist(
        tmp_path / "playlist.json",
        [
            item(CLIP_MS, "cnt-a", media=str(clips["cnt-a"][0])),
            item(CLIP_MS, "cnt-c", media=str(clips["cnt-c"][0])),
        ],
    )
    first = _player(server, token, "scr-mpv-kill", data, playlist)
    try:
        mpv_pid = int(re.findall(r"mpv started pid=(\d+)", first.wait_for("mpv started"))[0])
        first.wait_for("play started seq=1")
        os.kill(mpv_pid, signal.SIGKILL)
        first.wait_for("play ended seq=1 interrupted")
        first.wait_for("starting it again")
        first.wait_for("play started seq=2")
        pids = [int(p) for p in re.findall(r"mpv started pid=(\d+)", first.log())]
        assert pids[0] == mpv_pid
        assert len(pids) == 2
        assert pids[1] != mpv_pid
        first.kill()
        _wait_gone(pids[1])  # mpv does not outlive its player (PR_SET_PDEATHSIG)
    finally:
        first.ensure_dead()
    second = _player(server, token, "scr-mpv-kill", data, playlist)
    try:
        second.wait_for("play ended seq=3 completed")
        second.wait_for("play started seq=4")
        second.proc.send_signal(signal.SIGTERM)  # the open play interrupted
        try:
            code = second.wait(30)
        except Exception:
            raise AssertionError(second.log()) from None
        assert code == 0, second.log()
    finally:
        second.ensure_dead()
    rows = wait_stored(server.db_url, "scr-mpv-kill", 4)
    assert [(r["seq"], r["content_id"], r["end_reason"]) for r in rows] == [
        (1, "cnt-a", "interrupted"),
        (2, "cnt-c", "device_restart"),
        (3, "cnt-a", "completed"),
        (4, "cnt-c", "interrupted"),
    ]
    assert _own_clip(rows[2], data, clips) <= DEFAULT_MATCH_THRESHOLD


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    """Wait until a process has exited (a zombie counts as exited); a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")


def test_mpv_plays_are_verified_and_another_contents_clip_fails_screenshot_mismatch(
    clips: dict[str, tuple[Path, list[bytes]]], screen: str, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'verified.db'}"
    with ServerProcess(db_url, "--limit", "verify_settle_ms=0") as server:
        refs = {c: clips[c][1] for c in ("cnt-a", "cnt-c")}
        book(server.url, operator_token(db_url, "ops"), refs)
        token = provision(db_url, "scr-mpv-verify", "store-1")
        playlist = write_playlist(
            tmp_path / "playlist.json",
            [
                item(CLIP_MS, "cnt-a", media=str(clips["cnt-a"][0])),
                # The wrong picture: cnt-c's clip shown under cnt-a's id.
                item(CLIP_MS, "cnt-a", media=str(clips["cnt-c"][0])),
            ],
        )
        data = tmp_path / "device"
        player = _player(server, token, "scr-mpv-verify", data, playlist, "--max-plays", "2")
        try:
            assert player.wait(60) == 0, player.log()
        finally:
            player.ensure_dead()
        decided = wait_decided(db_url, "scr-mpv-verify", 2)
    assert decided == {1: ("verified", ""), 2: ("failed", "screenshot_mismatch")}
