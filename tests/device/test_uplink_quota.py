"""A screenshot refused over the device's quota (429) is kept on the device and sent later."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx

from playproof.device import Device
from tests.device.helpers import FixedPicture, content, device_config, eventually, query
from tests.server.reporting import operator_token
from tests.support import ServerProcess, free_port, png, provision

NO_QUOTA = ("--limit", "screenshot_quota_floor=0", "--limit", "screenshot_quota_per_play=0")


async def test_a_screenshot_over_quota_is_kept_and_uploaded_once_the_service_takes_it(
    data_dir: Path, db_url: str
) -> None:
    token = provision(db_url, "scr-1")
    ops = operator_token(db_url, "ops-shots")
    picture = png(16, 16, (20, 20, 200))
    sha = hashlib.sha256(picture).hexdigest()
    port = free_port()
    refusing = ServerProcess(db_url, *NO_QUOTA, port=port)
    url = refusing.start()
    device = await Device.open(device_config(data_dir, url, token), capture=FixedPicture(picture))
    try:
        play = await device.start(content(expected_ms=200))
        await asyncio.sleep(0.25)
        await play.end()

        async def refused() -> bool:
            async with httpx.AsyncClient(base_url=url) as http:
                answer = await http.get(
                    "/v1/devices/scr-1", headers={"Authorization": f"Bearer {ops}"}
                )
            return bool(answer.json().get("screenshots_refused"))

        await eventually(refused, what="the quota refusal in device health")
        assert query(db_url, "SELECT count(*) FROM screenshots") == [(0,)]
        assert (data_dir / "screenshots" / "pending" / f"{sha}.png").exists(), "kept"
        refusing.kill()
        with ServerProcess(db_url, port=port):

            async def uploaded() -> bool:
                return query(db_url, "SELECT sha256 FROM screenshots") == [(sha,)]

            await eventually(uploaded, 30, "the screenshot uploaded to the restarted service")
    finally:
        await device.close(flush_timeout_s=0.5)
        refusing.kill()
    assert (data_dir / "screenshots" / "sent" / f"{sha}.png").exists()
