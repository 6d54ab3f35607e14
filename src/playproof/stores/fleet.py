"""What the fleet view reads, one page of devices at a time, on either store.

`GET /v1/devices` pages by device id; each page reads only its own devices'
journals, gaps, statuses, evictions and restarts, so that its work depends on
the page, not on the fleet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from playproof.rules import Gap
from playproof.stores.base import DeviceInfo, JournalInfo, Reader
from playproof.stores.queries import DEVICE_ROLLUP, placeholder


class DevicePage(NamedTuple):
    """What a page of devices holds: the devices, and per device what health needs."""

    devices: list[DeviceInfo]
    journals: dict[str, list[JournalInfo]]
    # (received_at, payload JSON) of the latest status.
    statuses: dict[str, tuple[int, str]]
    evicted: dict[str, list[tuple[str, int, int]]]
    restarts: dict[str, int]


async def _rows(store: Reader, sql: str, ids: Sequence[str], *more: Any) -> list[tuple[Any, ...]]:
    """Rows of `sql`, whose `{ids}` becomes the list of device ids."""
    ph = placeholder(store)
    listed = ", ".join([ph] * len(ids))
    return await store.read_rows(sql.format(ids=listed, ph=ph), (*ids, *more))


async def devices_after(store: Reader, after: str | None, limit: int) -> list[DeviceInfo]:
    """Up to `limit` registered devices with ids after `after`, by id."""
    ph = placeholder(store)
    where, params = "", list[Any]([limit])
    if after is not None:
        where, params = f"WHERE device_id > {ph} ", [after, limit]
    rows = await store.read_rows(
        "SELECT device_id, store_id, created_at, revoked_at FROM devices "
        f"{where}ORDER BY device_id LIMIT {ph}",
        params,
    )
    return [DeviceInfo(*row) for row in rows]


async def journals_of(store: Reader, ids: Sequence[str]) -> dict[str, list[JournalInfo]]:
    """These devices' journals with their gaps."""
    gaps: dict[tuple[str, str], list[Gap]] = {}
    for device, journal, *gap in await _rows(
        store,
        "SELECT device_id, journal_id, first_seq, last_seq, before_ts, after_ts FROM gaps "
        "WHERE device_id IN ({ids}) ORDER BY device_id, journal_id, first_seq",
        ids,
    ):
        gaps.setdefault((device, journal), []).append(Gap(*(int(v) for v in gap)))
    found: dict[str, list[JournalInfo]] = {}
    for device, journal, high, first, last, suspect in await _rows(
        store,
        "SELECT device_id, journal_id, high_water, first_seen, last_seen, suspect FROM journals "
        "WHERE device_id IN ({ids}) ORDER BY device_id, first_seen, journal_id",
        ids,
    ):
        held = tuple(gaps.get((device, journal), ()))
        info = JournalInfo(device, journal, int(high), int(first), int(last), held, bool(suspect))
        found.setdefault(device, []).append(info)
    return found


async def page(store: Reader, after: str | None, limit: int, since_ms: int) -> DevicePage:
    """A page of devices and what their health needs; restarts counted from `since_ms`."""
    devices = await devices_after(store, after, limit)
    ids = [d.device_id for d in devices]
    if not ids:
        return DevicePage([], {}, {}, {}, {})
    payload = "payload::text" if store.dialect == "postgres" else "payload"
    statuses = await _rows(
        store,
        f"SELECT device_id, received_at, {payload} FROM device_status WHERE device_id IN ({{ids}})",
        ids,
    )
    evicted: dict[str, list[tuple[str, int, int]]] = {}
    for device, journal, first, last in await _rows(
        store,
        "SELECT device_id, journal_id, first_seq, last_seq FROM evictions "
        "WHERE device_id IN ({ids})",
        ids,
    ):
        evicted.setdefault(str(device), []).append((str(journal), int(first), int(last)))
    size = DEVICE_ROLLUP.bucket_ms
    restarts = await _rows(
        store,
        f"SELECT device_id, SUM(restarts) FROM {DEVICE_ROLLUP.table} "
        "WHERE device_id IN ({ids}) AND bucket >= {ph} GROUP BY device_id",
        ids,
        int(since_ms // size * size),
    )
    return DevicePage(
        devices,
        await journals_of(store, ids),
        {str(d): (int(at), str(p)) for d, at, p in statuses},
        evicted,
        {str(d): int(n) for d, n in restarts if n},
    )
