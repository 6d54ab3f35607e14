"""Helpers of the operators' tests: operator tokens, a real PNG, and posting records."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from playproof.protocol import Record
from playproof.server import admin
from playproof.server.operators import add_operator
from tests.support import ServerProcess, client, envelope


def operator_token(db_url: str, name: str) -> str:
    """Register an operator through the public API and return its token."""

    async def add() -> str:
        async with admin.opened(db_url) as store:
            return await add_operator(store, name)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(add())).result()


def upload_png(server: ServerProcess, token: str, image: bytes) -> str:
    """PUT a screenshot as its device would; its SHA-256."""
    sha = hashlib.sha256(image).hexdigest()
    with client(server.url, token) as http:
        response = http.put(
            f"/v1/screenshots/{sha}", content=image, headers={"Content-Type": "image/png"}
        )
    assert response.status_code in (200, 201), response.text
    return sha


def post_records(
    server: ServerProcess, token: str, records: list[Record], device_id: str, **extra: Any
) -> list[dict[str, Any]]:
    """POST one batch; the acks."""
    with client(server.url, token) as http:
        response = http.post("/v1/impressions/batch", json=envelope(records, device_id, **extra))
    assert response.status_code == 200, response.text
    acks: list[dict[str, Any]] = response.json()["acks"]
    return acks


def every_device(server: ServerProcess, operator: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every device of GET /v1/devices, following `next_cursor` page after page."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    with client(server.url, operator) as http:
        while True:
            response = http.get("/v1/devices", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["devices"]) <= limit
            found.extend(page["devices"])
            if page["next_cursor"] is None:
                return found
            params["cursor"] = page["next_cursor"]
