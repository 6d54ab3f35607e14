"""An HTML5 kiosk page with /playproof.js, in Debian's Chromium (Playwright), on a real agent.

The page and its media (WebM clips and a PNG made by ffmpeg) come from a plain
static web server on its own loopback port: the kiosk's origin, the one the agent
allows. Every play is found stored on the service, each with the end reason the
page's events gave and a screenshot drawn from the page's own canvas, and the
billable ones `verified` against the catalog's reference images.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from playproof.imaging import DEFAULT_MATCH_THRESHOLD
from tests.device.realplayers import (
    AgentProcess,
    book,
    distance,
    make_clip,
    make_picture,
    make_references,
    wait_stored,
)
from tests.server.reporting import operator_token
from tests.server.test_dashboard import ARGS, CHROMIUM, _unavailable
from tests.server.test_verification import wait_decided
from tests.support import ServerProcess, provision

CLIP_MS = 3000
PICTURE_MS = 2000

PAGE = """<!doctype html>
<html><head><title>kiosk</title></head>
<body style="margin:0;background:#000">
<video id="screen" muted playsinline width="320" height="240"></video>
<img id="still" style="display:none" width="320" height="240">
<script src="%(agent)s/playproof.js"></script>
<script>
const items = %(items)s;
const video = document.getElementById("screen");
const still = document.getElementById("still");
playproof.track(video);
playproof.track(still);
window.ended = [];
window.problems = [];
for (const el of [video, still]) {
  el.addEventListener("playproof:ended", (e) => window.ended.push(e.detail));
  el.addEventListener("playproof:error", (e) => window.problems.push(e.detail.error));
}
let next = 0;
function show(el, it) {
  Object.assign(el.dataset, {campaignId: "cmp-1", adGroupId: "ag-1", supplierId: "sup-1",
                             contentId: it.content_id, expectedMs: String(it.expected_ms)});
  el.src = it.src;
}
function advance() {
  if (next >= items.length) { video.removeAttribute("src"); video.load(); return; }
  const it = items[next++];
  if (it.kind === "image") {
    video.style.display = "none"; still.style.display = "block";
    show(still, it);
    setTimeout(() => playproof.end(still, "completed").then(advance), it.expected_ms);
    return;
  }
  show(video, it);
  video.play();
  // A skip: the page moves on before the clip ends (the script records it `skipped`).
  if (it.skip_after_ms) setTimeout(advance, it.skip_after_ms);
}
video.addEventListener("ended", () => setTimeout(advance, 0));
advance();
</script></body></html>
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, launched by Playwright, allowed to play media without a gesture."""
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}: run scripts/system-deps.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[dev]'")
    args = [*ARGS, "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        yield launched
        launched.close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test's output clean."""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static web server for the kiosk's page and media: its origin and its folder."""
    folder = tmp_path / "site"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A service of its own that decides plays as soon as they are stored."""
    with ServerProcess(f"sqlite:///{tmp_path / 'kiosk.db'}", "--limit", "verify_settle_ms=0") as s:
        yield s


def test_a_kiosk_page_records_every_video_and_image_play_with_its_own_canvas_frame(
    browser: Any, server: ServerProcess, site: tuple[str, Path], tmp_path: Path
) -> None:
    origin, folder = site
    references = {}
    for index, content_id in enumerate(("cnt-a", "cnt-b", "cnt-c")):
        references[content_id] = make_references(make_clip(folder, content_id, index, 3.0))
    references["cnt-d"] = [make_picture(folder, "cnt-d", 3).read_bytes()]
    items = [
        {"src": "cnt-a.webm", "content_id": "cnt-a", "expected_ms": CLIP_MS},
        {"src": "cnt-b.webm", "content_id": "cnt-b", "expected_ms": CLIP_MS, "skip_after_ms": 900},
        {"src": "cnt-c.webm", "content_id": "cnt-c", "expected_ms": CLIP_MS},
        {"src": "cnt-d.png", "content_id": "cnt-d", "expected_ms": PICTURE_MS, "kind": "image"},
    ]
    book(server.url, operator_token(server.db_url, "ops"), references)
    token = provision(server.db_url, "scr-kiosk", "store-1")
    data = tmp_path / "device"
    agent = AgentProcess(
        server.url, token, "scr-kiosk", data, "--allow-origin", origin, "--screenshots", "player"
    )
    agent.start()
    try:
        (folder / "index.html").write_text(PAGE % {"agent": agent.url, "items": json.dumps(items)})
        context = browser.new_context(viewport={"width": 320, "height": 240})
        page = context.new_page()
        try:
            page.goto(origin + "/index.html")
            page.wait_for_function("window.ended.length >= 4", timeout=40_000)
            ended = page.evaluate("window.ended")
            problems = page.evaluate("window.problems")
        finally:
            context.close()
        rows = wait_stored(server.db_url, "scr-kiosk", 4)
        decided = wait_decided(server.db_url, "scr-kiosk", 4)  # the partial one counts
    finally:
        agent.kill()
    assert problems == []
    assert [e["reason"] for e in ended] == ["completed", "skipped", "completed", "completed"]
    assert [(r["seq"], r["content_id"], r["end_reason"]) for r in rows] == [
        (1, "cnt-a", "completed"),
        (2, "cnt-b", "skipped"),
        (3, "cnt-c", "completed"),
        (4, "cnt-d", "completed"),
    ]
    for row in (rows[0], rows[2], rows[3]):
        sha = row["screenshot_sha256"]
        assert sha, f"play {row['seq']} has no screenshot"
        picture = next((data / "screenshots").glob(f"*/{sha}.png")).read_bytes()
        assert distance(picture, references[row["content_id"]]) <= DEFAULT_MATCH_THRESHOLD
    # The billable plays are verified against the catalog's references; the skip is partial.
    assert {seq: decided[seq] for seq in (1, 3, 4)} == dict.fromkeys((1, 3, 4), ("verified", ""))
    assert rows[1]["status"] == "partial"
