"""The fleet's health at a glance: one summary per device, with its problems named.

A summary gathers what the service knows of a screen: when it was last heard
from, the skew of its last status, its clock and drift, its queue, evictions,
sequences (high-water mark, open gaps, lost ranges, journal resets) and the
plays a crash closed (`device_restart`) in the last day. `problems` names what
an operator should look at; the thresholds are below and in docs/operators.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from playproof.errors import NotFound
from playproof.protocol import Status, decode_status
from playproof.rules import HOUR_MS, MINUTE_MS, PANEL_NOT_SEEN, Policy
from playproof.server.admin import device_health
from playproof.server.keys import keys_view
from playproof.server.sequences import EvictedRanges, device_sequences, evicted_count
from playproof.stores import fleet as fleet_queries
from playproof.stores import queries
from playproof.stores.base import DeviceInfo, JournalInfo, Store

OFFLINE_AFTER_MS: Final = 5 * MINUTE_MS  # a device sends a status every minute
DRIFT_PPM: Final = 100.0  # about 8.6 s a day
RESTARTS_WINDOW_MS: Final = 24 * HOUR_MS
FLEET_PAGE: Final = 1000  # devices read at once when every one is wanted
PROBLEMS: Final = (
    "revoked",
    "offline",
    "skewed",
    "unsynced",
    "drifting",
    "gaps",
    "lost",
    "suspect",
    "screenshot_quota",
    "key_alarm",
    "panel_off",
)


class _Seen(NamedTuple):
    received_at: int
    status: Status
    evicted_total: int


def clock_state(status: Status | None, now: int, policy: Policy) -> str:
    """`synced` (an NTP exchange within `sync_max_age_ms`), `unsynced`, `never` or `unknown`."""
    if status is None:
        return "unknown"
    if status.last_sync_ts is None:
        return "never"
    return "synced" if now - status.last_sync_ts <= policy.sync_max_age_ms else "unsynced"


def _status_part(seen: _Seen | None, now: int, policy: Policy) -> dict[str, Any]:
    status = seen.status if seen else None
    skew = status.sent_at - seen.received_at if seen and status else None
    return {
        "last_status_at": seen.received_at if seen else None,
        "last_skew_ms": skew,
        "clock_state": clock_state(status, now, policy),
        "clock_offset_ms": status.clock_offset_ms if status else None,
        "drift_ppm": status.drift_ppm if status else None,
        "last_sync_at": status.last_sync_ts if status else None,
        "queue_depth": status.queue_depth if status else None,
        "oldest_queued_at": status.oldest_queued_ts if status else None,
        "evicted_total": seen.evicted_total if seen else 0,
        "version": status.version if status else None,
        # Version 2: the device's key as it reports it (registered, pending, alarm) and
        # what its panel showed last.
        "key_id": status.key_id if status else None,
        "key_state": status.key_state if status else None,
        "key_alarm": status.key_alarm if status else None,
        "panel_state": status.panel_state if status else None,
        "panel_source": status.panel_source if status else None,
    }


def _problems(summary: dict[str, Any], now: int, policy: Policy) -> list[str]:
    last = summary["last_seen"]
    skew, drift = summary["last_skew_ms"], summary["drift_ppm"]
    found = {
        "revoked": summary["revoked_at"] is not None,
        "offline": last is None or now - last > OFFLINE_AFTER_MS,
        "skewed": skew is not None and abs(skew) > policy.skew_flag_ms,
        "unsynced": summary["clock_state"] in ("unsynced", "never"),
        "drifting": drift is not None and abs(drift) > DRIFT_PPM,
        "gaps": summary["open_gaps"] > 0,
        "lost": summary["lost"] > 0,
        # Gaps were merged past Policy.max_open_gaps: missing and lost are upper bounds.
        "suspect": summary["suspect"],
        "screenshot_quota": summary["screenshots_refused"] > 0,
        # Its key is refused (403/409/400): it keeps sealing unsigned plays.
        "key_alarm": bool(summary["key_alarm"]),
        # Its display is reported not showing: its plays are partial (panel_off).
        "panel_off": summary["panel_state"] in PANEL_NOT_SEEN,
    }
    return [name for name in PROBLEMS if found[name]]


def summarize(
    device: DeviceInfo,
    seen: _Seen | None,
    journals: list[JournalInfo],
    restarts: int,
    now: int,
    policy: Policy,
    screenshots_refused: int = 0,
    *,
    evicted: EvictedRanges = (),
) -> dict[str, Any]:
    """One device's summary as plain values (times in epoch ms; the routes format them).

    `screenshots_refused`: uploads refused over the screenshot quota today, which only
    the running service knows (quota.py).
    """
    seqs = device_sequences(journals, now, policy, evicted)
    heard = [j.last_seen for j in journals] + ([seen.received_at] if seen else [])
    summary: dict[str, Any] = {
        "device_id": device.device_id,
        "store_id": device.store_id,
        "created_at": device.created_at,
        "revoked_at": device.revoked_at,
        "last_seen": max(heard) if heard else None,
        **_status_part(seen, now, policy),
        "high_water": seqs["high_water"],
        "current_journal": seqs["current_journal"],
        "open_gaps": seqs["open_gaps"],
        "missing": sum(j["missing"] for j in seqs["journals"]),
        "lost": seqs["lost"],
        "lost_ranges": sum(len(j["lost_ranges"]) for j in seqs["journals"]),
        "resets": seqs["resets"],
        "suspect": seqs["suspect"],
        "restarts": restarts,
        "screenshots_refused": screenshots_refused,
    }
    summary["problems"] = _problems(summary, now, policy)
    return summary


async def fleet_page(
    store: Store,
    now: int,
    policy: Policy,
    refused: Mapping[str, int] | None = None,
    *,
    after: str | None = None,
    limit: int = FLEET_PAGE,
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` devices' summaries, by id after `after`, and the id to resume after.

    A page reads only its own devices (stores.fleet): its work is the page's, not
    the fleet's. `refused`: screenshot uploads refused over quota today, per device.
    """
    refused = refused or {}
    got = await fleet_queries.page(store, after, limit, now - RESTARTS_WINDOW_MS)
    summaries = []
    for d in got.devices:
        evicted = got.evicted.get(d.device_id, ())
        status = got.statuses.get(d.device_id)
        # Distinct evicted sequences, not the sum of the statuses' counts: a status
        # resent after a lost answer must not count its evictions twice.
        seen = (
            _Seen(status[0], decode_status(status[1].encode()), evicted_count(evicted))
            if status
            else None
        )
        journals = got.journals.get(d.device_id, [])
        restarts = got.restarts.get(d.device_id, 0)
        refusals = refused.get(d.device_id, 0)
        summaries.append(
            summarize(d, seen, journals, restarts, now, policy, refusals, evicted=evicted)
        )
    resume = got.devices[-1].device_id if len(got.devices) == limit else None
    return summaries, resume


async def fleet(
    store: Store, now: int, policy: Policy, refused: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """Every registered device's summary, by id, read a page at a time (for exports)."""
    summaries: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        found, after = await fleet_page(store, now, policy, refused, after=after)
        summaries.extend(found)
        if after is None:
            return summaries


async def device_detail(
    store: Store, device_id: str, now: int, policy: Policy, refused: int = 0
) -> dict[str, Any]:
    """One device's summary, with its latest status, evicted ranges and journals in full."""
    device = await store.get_device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r} is registered")
    info = await store.latest_status(device_id)
    evicted = info.evicted_ranges if info else ()
    seen = _Seen(info.received_at, info.status, evicted_count(evicted)) if info else None
    journals = await store.journals(device_id)
    restarts = await queries.restarts_since(store, now - RESTARTS_WINDOW_MS)
    summary = summarize(
        device, seen, journals, restarts.get(device_id, 0), now, policy, refused, evicted=evicted
    )
    health = await device_health(store, device_id, now, policy)
    return {
        **summary,
        "status": health["status"],
        "evicted_ranges": health["evicted_ranges"],
        "journals": health["sequences"]["journals"],
        # Its keys (protocol version 2), self-enrolment and signature requirement.
        **keys_view(device),
    }
