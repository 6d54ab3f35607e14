"""Helpers for the real-player tests (issue 16): the agent process, clips made by ffmpeg.

Clips come from ffmpeg's `testsrc2` with the content id written large across the
middle and a flip of its own per content, so that two contents' frames differ in
greyscale (what the perceptual hash looks at); the reference image of a content
is a frame from the middle of its own clip, made by the same generator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from playproof.imaging import fingerprint, hash_distance
from tests.device.conftest import require_program
from tests.device.helpers import db_path, impressions
from tests.support import ChildProcess

# A flip per content: the same test pattern, seen another way round, hashes far apart.
FLIPS = ("null", "hflip", "vflip", "hflip,vflip")


def ids(content_id: str, expected_ms: int) -> dict[str, Any]:
    """A POST /plays body."""
    return {
        "campaign_id": "cmp-1",
        "ad_group_id": "ag-1",
        "content_id": content_id,
        "supplier_id": "sup-1",
        "expected_ms": expected_ms,
    }


class AgentProcess(ChildProcess):
    """`playproof agent` in a real process on a free loopback port."""

    def __init__(self, server_url: str, token: str, device_id: str, data_dir: Path, *extra: str):
        super().__init__()
        self.args = [
            "--server",
            server_url,
            "--token",
            token,
            "--device-id",
            device_id,
            "--store-id",
            "store-1",
            "--data-dir",
            str(data_dir),
            *extra,
        ]
        self.data_dir = data_dir
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        """Start it; its base URL once it listens."""
        has_listen = "--listen" in self.args
        cmd = [sys.executable, "-m", "playproof", "agent", *self.args]
        if not has_listen:
            cmd += ["--listen", "127.0.0.1:0"]
        ready = self._spawn(cmd, rb"playproof agent listening on (http://\S+)", "agent", timeout)
        self.url = ready.group(1).decode()
        return self.url

    @property
    def token(self) -> str:
        """The token the agent wrote to its data folder."""
        return (self.data_dir / "agent.token").read_text().strip()

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client that speaks as a local, non-browser player (the token from the file)."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def __enter__(self) -> AgentProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_stored(
    db_url: str, device_id: str, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The device's stored impressions once there are at least `count` (a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = impressions(db_url, device_id)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def stored_blob(db_url: str, sha256: str) -> bytes | None:
    """A screenshot the service stored (its content-addressed folder beside the database)."""
    path = Path(db_path(db_url)).with_suffix(".blobs") / sha256[:2] / sha256
    return path.read_bytes() if path.is_file() else None


def make_clip(folder: Path, content_id: str, index: int, seconds: float = 3.0) -> Path:
    """A WebM/VP8 clip of `content_id` (plays in mpv and in Chromium)."""
    ffmpeg = require_program("ffmpeg", "ffmpeg")
    path = folder / f"{content_id}.webm"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=320x240:rate=25:duration={seconds}",
            "-vf",
            _look(content_id, index),
            "-c:v",
            "libvpx",
            "-b:v",
            "400k",
            str(path),
        ],
        check=True,
    )
    return path


def make_references(clip: Path) -> list[bytes]:
    """PNG frames at 40, 50 and 60 % of a clip: the content's reference images.

    A video's proof frame is taken anywhere in that window and the pattern moves, so a
    content has several references, as a catalog would give a video (the verifier
    matches any of them).
    """
    ffmpeg = require_program("ffmpeg", "ffmpeg")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(clip)],
        check=True,
        capture_output=True,
    )
    length = float(json.loads(probe.stdout)["format"]["duration"])
    frames = []
    for percent in (40, 50, 60):
        out = clip.with_suffix(f".ref{percent}.png")
        subprocess.run(
            [
                ffmpeg,
                "-v",
                "error",
                "-y",
                "-ss",
                f"{length * percent / 100:.2f}",
                "-i",
                str(clip),
                "-frames:v",
                "1",
                str(out),
            ],
            check=True,
        )
        frames.append(out.read_bytes())
    return frames


def make_picture(folder: Path, content_id: str, index: int) -> Path:
    """A still PNG of `content_id` from the same generator (an image item)."""
    ffmpeg = require_program("ffmpeg", "ffmpeg")
    path = folder / f"{content_id}.png"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:duration=1",
            "-vf",
            _look(content_id, index),
            "-frames:v",
            "1",
            str(path),
        ],
        check=True,
    )
    return path


def _look(content_id: str, index: int) -> str:
    text = (
        f"drawtext=text='{content_id}':fontsize=64:fontcolor=white:box=1:boxcolor=black"
        ":x=(w-text_w)/2:y=(h-text_h)/2"
    )
    return f"{FLIPS[index % len(FLIPS)]},{text}"


def distance(picture: bytes, references: list[bytes]) -> int:
    """Bits between a picture's perceptual hash and the nearest reference's (playproof.imaging)."""
    phash = fingerprint(picture).phash
    return min(hash_distance(phash, fingerprint(ref).phash) for ref in references)


def book(server_url: str, operator: str, references: dict[str, list[bytes]]) -> None:
    """A catalog booking these contents in cmp-1/ag-1 (screenshot required), with references."""
    auth = {"Authorization": f"Bearer {operator}"}
    contents = sorted(references)
    catalog = {
        "suppliers": [{"supplier_id": "sup-1", "name": "Acme", "currency": "EUR"}],
        "stores": [{"store_id": "store-1", "time_zone": "UTC"}],
        "contents": [{"content_id": c, "expected_ms": 3000} for c in contents],
        "campaigns": [
            {
                "campaign_id": "cmp-1",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-01-01", "to": "2099-01-01"},
                "ad_groups": [{"ad_group_id": "ag-1", "contents": contents}],
                "price": {"model": "per_play", "amount": "0.01", "currency": "EUR"},
                "require_screenshot": True,
            }
        ],
    }
    with httpx.Client(base_url=server_url, headers=auth, timeout=30) as client:
        client.put("/v1/catalog", json=catalog).raise_for_status()
        for content_id, frames in references.items():
            for frame in frames:
                client.put(
                    f"/v1/contents/{content_id}/reference",
                    content=frame,
                    headers={"Content-Type": "image/png"},
                ).raise_for_status()
