"""Registering the fleet's screens through the admin API, each with a token of its own.

A screen's token is kept in its data folder (`token`, mode 0600), as a real
player keeps its credentials; a later run reuses it while the service still
knows it, and otherwise registers the screen (or rotates its token).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from playproof.fleet.plan import ScreenPlan
from playproof.server import admin
from playproof.server.auth import hash_token
from playproof.stores.base import Store

TOKEN_FILE: Final = "token"  # noqa: S105 (a file name)


async def provision(db_url: str, screens: Sequence[ScreenPlan]) -> dict[str, str]:
    """A working token for every screen, by device id."""
    async with admin.opened(db_url) as store:
        return {s.device_id: await _token(store, s) for s in screens}


async def _token(store: Store, screen: ScreenPlan) -> str:
    path = screen.data_dir / TOKEN_FILE
    saved = path.read_text().strip() if path.is_file() else ""
    if saved:
        found = await store.device_for_token(hash_token(saved))
        if found and found.device.device_id == screen.device_id and found.device.revoked_at is None:
            return saved
    if await store.get_device(screen.device_id) is None:
        token = await admin.add_device(store, screen.device_id, screen.store_id)
    else:
        token = await admin.rotate_device(store, screen.device_id)
    _keep(path, token)
    return token


def _keep(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")


async def add_operator(db_url: str, name: str) -> str:
    """Register an operator for the dashboard and return its token."""
    from playproof.server.operators import add_operator as add

    async with admin.opened(db_url) as store:
        return await add(store, name)
