"""Screenshot quotas: a device's daily bytes follow its own plays; refusals show in its health.

With `screenshot_bytes=4096` and the default formula (5 screenshots' worth, plus 2 per
play the device committed today), a device that played nothing may send 20 KiB a day
and one that played 3 times 44 KiB. Blob reads for the operators' screenshot route
happen off the event loop: a read stuck on the disk stalls nobody else.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, envelope, make_record, now_ms, png, provision

UNIT = 4096
SHOT = 4000  # bytes of each test screenshot: one fits a unit, two do not


def picture() -> bytes:
    """A distinct screenshot of SHOT bytes (PNG magic, then noise: the service checks no more)."""
    magic = b"\x89PNG\r\n\x1a\n"
    return magic + os.urandom(SHOT - len(magic))


def put(http: httpx.Client, body: bytes) -> httpx.Response:
    sha = hashlib.sha256(body).hexdigest()
    return http.put(f"/v1/screenshots/{sha}", content=body, headers={"Content-Type": "image/png"})


def play_today(http: httpx.Client, device_id: str, seq: int) -> None:
    """Commit one short play that started a moment ago."""
    end = now_ms() - 500
    record = make_record(
        device_id=device_id, seq=seq, start_ts=end - 1000, end_ts=end, duration_ms=1000,
        expected_ms=1000,
    )  # fmt: skip
    answer = http.post("/v1/impressions/batch", json=envelope([record], device_id))
    assert answer.json()["acks"][0]["result"] == "accepted"


@pytest.fixture(scope="module")
def quota_server(shared_db: str) -> Iterator[tuple[ServerProcess, str]]:
    """A server with 4 KiB screenshots (so that quotas are small), and an operator token."""
    ops = operator_token(shared_db, "ops-quota")
    with ServerProcess(shared_db, "--limit", f"screenshot_bytes={UNIT}") as proc:
        yield proc, ops


def uploads_until_refused(server: ServerProcess, token: str, most: int = 40) -> httpx.Response:
    with client(server.url, token) as http:
        for taken in range(most):
            response = put(http, picture())
            if response.status_code != 201:
                response.extensions["taken"] = taken
                return response
    raise AssertionError(f"{most} screenshots taken: no quota")


def test_a_device_that_played_nothing_gets_its_floor_then_429_with_retry_after(
    quota_server: tuple[ServerProcess, str],
) -> None:
    server, _ = quota_server
    refused = uploads_until_refused(server, provision(server.db_url, "scr-idle-shots"))
    assert refused.status_code == 429
    assert refused.extensions["taken"] == 5
    assert 1 <= int(refused.headers["retry-after"]) <= 300
    assert "screenshot bytes today" in refused.json()["error"]


def test_each_play_committed_today_adds_two_screenshots_worth(
    quota_server: tuple[ServerProcess, str],
) -> None:
    server, _ = quota_server
    token = provision(server.db_url, "scr-busy-shots")
    with client(server.url, token) as http:
        for seq in (1, 2, 3):
            play_today(http, "scr-busy-shots", seq)
    refused = uploads_until_refused(server, token)
    assert refused.status_code == 429
    assert refused.extensions["taken"] == 5 + 2 * 3


def test_quota_refusals_show_in_device_health(quota_server: tuple[ServerProcess, str]) -> None:
    server, ops = quota_server
    uploads_until_refused(server, provision(server.db_url, "scr-refused-shots"))
    provision(server.db_url, "scr-never-refused")
    with client(server.url, ops) as http:
        one = http.get("/v1/devices/scr-refused-shots").json()
        fleet = {d["device_id"]: d for d in http.get("/v1/devices").json()["devices"]}
    assert one["screenshots_refused"] == 1
    assert "screenshot_quota" in one["problems"]
    assert fleet["scr-refused-shots"]["screenshots_refused"] == 1
    assert fleet["scr-never-refused"]["screenshots_refused"] == 0
    assert "screenshot_quota" not in fleet["scr-never-refused"]["problems"]


def test_a_blob_read_stuck_on_the_disk_stalls_no_other_request(
    quota_server: tuple[ServerProcess, str],
) -> None:
    """The screenshot's file is swapped for a FIFO nobody writes: reading it blocks until
    the test writes. Meanwhile /healthz and a device's batch are answered."""
    server, ops = quota_server
    token = provision(server.db_url, "scr-stuck-blob")
    image = png(4, 4, (10, 200, 10))
    sha = hashlib.sha256(image).hexdigest()
    with client(server.url, token) as http:
        assert put(http, image).status_code == 201
        record = make_record(device_id="scr-stuck-blob", seq=1, screenshot_sha256=sha)
        http.post("/v1/impressions/batch", json=envelope([record], "scr-stuck-blob"))
    blob = Path(server.db_url.removeprefix("sqlite:///")).with_suffix(".blobs") / sha[:2] / sha
    blob.unlink()
    os.mkfifo(blob)
    route = "/v1/impressions/scr-stuck-blob/j-1/1/screenshot"
    answer: list[httpx.Response] = []
    with client(server.url, ops) as reader:
        stuck = threading.Thread(target=lambda: answer.append(reader.get(route)))
        stuck.start()
        try:
            with client(server.url, token) as http:
                http.timeout = httpx.Timeout(10)
                assert http.get("/healthz").status_code == 200
                record = make_record(device_id="scr-stuck-blob", seq=2)
                batch = http.post(
                    "/v1/impressions/batch", json=envelope([record], "scr-stuck-blob")
                )
                assert batch.status_code == 200
        finally:
            release(blob, image)
            stuck.join(30)
    assert answer[0].status_code == 200 and answer[0].content == image


def release(fifo: Path, data: bytes) -> None:
    """Write `data` into the FIFO once the service has it open for reading."""
    deadline = time.monotonic() + 30  # a deadline, not a speed
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert time.monotonic() < deadline, "the service never read the screenshot"
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return
