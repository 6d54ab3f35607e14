"""`playproof demo`: the service on the embedded SQLite default, with a demo device ready."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from playproof.protocol import Record, encode, seal
from playproof.server import admin
from playproof.server.runner import serve
from playproof.server.service import Service
from playproof.stores import DEFAULT_URL, open_store

DEMO_DEVICE = "demo-screen-1"
DEMO_STORE = "demo-store"


def example_record(device_id: str, seq: int) -> dict[str, object]:
    """A sealed, valid record of a 15 s play that ended a second ago."""
    end = time.time_ns() // 1_000_000 - 1000
    record = Record(
        ad_group_id="ag-1",
        campaign_id="cmp-demo",
        clock_offset_ms=0,
        clock_synced=True,
        content_id="cnt-1",
        device_id=device_id,
        duration_ms=15_000,
        end_reason="completed",
        end_ts=end,
        expected_ms=15_000,
        journal_id="j-demo",
        screenshot_at_ms=None,
        screenshot_sha256=None,
        seq=seq,
        start_ts=end - 15_000,
        store_id=DEMO_STORE,
        supplier_id="sup-1",
        v=1,
    )
    return dict(json.loads(encode(seal(record))))


async def provision(url: str) -> str:
    """A fresh token for the demo device (registering it on first use)."""
    async with admin.opened(url) as store:
        if await store.get_device(DEMO_DEVICE) is None:
            return await admin.add_device(store, DEMO_DEVICE, DEMO_STORE)
        return await admin.rotate_device(store, DEMO_DEVICE)


def banner(base: str, token: str) -> str:
    """What to paste into another terminal to see an impression arrive."""
    envelope = {
        "device_id": DEMO_DEVICE,
        "sent_at": time.time_ns() // 1_000_000,
        "impressions": [example_record(DEMO_DEVICE, int(time.time()))],
    }
    return (
        f"\n  playproof demo: serving on {base} (database {DEFAULT_URL})\n"
        f"  demo device {DEMO_DEVICE!r}, token:\n\n    {token}\n\n"
        "  send one impression (paste into another terminal within 10 minutes):\n\n"
        f"    curl -s {base}/v1/impressions/batch -H 'Authorization: Bearer {token}' \\\n"
        f"      -H 'Content-Type: application/json' -d '{json.dumps(envelope)}'\n\n"
        f"  device health:  .venv/bin/playproof devices show {DEMO_DEVICE}\n"
        "  Ctrl-C stops the service.\n"
    )


def run(port: int = 8787) -> None:
    """Provision the demo device and serve until Ctrl-C."""
    token = asyncio.run(provision(DEFAULT_URL))
    Path("playproof.demo-token").write_text(token + "\n")
    serve(
        Service(open_store(DEFAULT_URL)),
        "127.0.0.1",
        port,
        "warning",
        ready=lambda base: print(banner(base, token), file=sys.stderr, flush=True),
    )
