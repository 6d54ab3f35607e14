"""Day partitions of the impressions table: named, created ahead, and on demand.

Each UTC day of `start_ts` (epoch ms) has its own partition,
`impressions_pYYYYMMDD`. The service creates today's and the next few days'
ahead of time, and a partition on demand for a record that lands on another
recent day (late records, skewed clocks). Anything else (a play that claims to
have started weeks ago) lands in the default partition, which is only a safety
net: a day whose rows are in the default partition keeps them there.

A partition is created as a plain table and then attached: attaching takes a
SHARE UPDATE EXCLUSIVE lock on the parent, which concurrent inserts do not
block, where `CREATE TABLE ... PARTITION OF` would queue behind them and stall
every insert meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Final

import psycopg
from psycopg import AsyncConnection, sql

log = logging.getLogger(__name__)

DAY_MS: Final = 86_400_000
AHEAD_DAYS: Final = 3
ON_DEMAND_BACK_DAYS: Final = 3
RETRY_AFTER_S: Final = 60.0
PARENT: Final = "impressions"
PREFIX: Final = "impressions_p"

Connect = Callable[[str], AbstractAsyncContextManager[AsyncConnection]]

_LIST = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass('impressions')"
)
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('playproof:partitions:' || current_schema()))"
_ATTACHED = (
    "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) "
    "AND inhparent = to_regclass('impressions'))"
)


def day_of(ts_ms: int) -> int:
    """The UTC day number (days since the epoch) of a time in epoch milliseconds."""
    return ts_ms // DAY_MS


def partition_name(day: int) -> str:
    """The name of a day's partition: `impressions_pYYYYMMDD`."""
    return PREFIX + datetime.fromtimestamp(day * DAY_MS / 1000, UTC).strftime("%Y%m%d")


def day_of_name(name: str) -> int | None:
    """The day a partition name stands for, or None for any other table."""
    if not name.startswith(PREFIX):
        return None
    try:
        when = datetime.strptime(name.removeprefix(PREFIX), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day_of(int(when.timestamp() * 1000))


def ahead(now_ms: int) -> list[int]:
    """The days whose partitions should exist ahead of time: yesterday to a few days on."""
    today = day_of(now_ms)
    return list(range(today - 1, today + AHEAD_DAYS + 1))


def on_demand(days: Iterable[int], now_ms: int) -> set[int]:
    """The days worth a partition of their own; older or stranger ones go to the default."""
    today = day_of(now_ms)
    return {d for d in days if today - ON_DEMAND_BACK_DAYS <= d <= today + AHEAD_DAYS}


class Partitions:
    """The days that have a partition, and the creation of missing ones."""

    def __init__(self, connect: Connect, lock_timeout_ms: int = 2000) -> None:
        self._connect = connect
        self._lock_timeout_ms = lock_timeout_ms
        self._known: set[int] = set()
        self._not_before: dict[int, float] = {}  # days whose creation failed, and when to retry
        self._mutex = asyncio.Lock()

    @property
    def known(self) -> frozenset[int]:
        """Days known to have a partition."""
        return frozenset(self._known)

    async def load(self) -> None:
        """Learn which day partitions exist."""
        async with self._connect("list partitions") as conn:
            rows = await (await conn.execute(_LIST)).fetchall()
        self._known = {d for (name,) in rows if (d := day_of_name(name)) is not None}

    def missing(self, start_ts: Iterable[int], now_ms: int) -> set[int]:
        """Days of these start times that should get a partition before rows land."""
        days = on_demand({day_of(ts) for ts in start_ts}, now_ms) - self._known
        # A creation that just failed is not retried on every commit, stalling each.
        later = time.monotonic()
        return {d for d in days if self._not_before.get(d, 0.0) <= later}

    async def ensure(self, days: Iterable[int]) -> None:
        """Create the partitions of these days that do not exist yet (failures are logged)."""
        async with self._mutex:
            for day in sorted(set(days) - self._known):
                if await self._create(day):
                    self._known.add(day)

    async def _create(self, day: int) -> bool:
        name = partition_name(day)
        async with self._connect(f"create partition {name}") as conn:
            try:
                async with conn.transaction():
                    await _create_and_attach(conn, name, day, self._lock_timeout_ms)
            except psycopg.errors.CheckViolation:
                # The default partition already holds rows of that day: they stay there.
                log.warning("rows of %s are in the default partition; not creating it", name)
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                log.warning("cannot create partition %s now (will retry): %s", name, exc)
                self._not_before[day] = time.monotonic() + RETRY_AFTER_S
                return False
        return True


async def _create_and_attach(conn: AsyncConnection, name: str, day: int, wait_ms: int) -> None:
    await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(wait_ms)))
    await conn.execute(_LOCK)
    if (await (await conn.execute(_ATTACHED, (name,))).fetchone() or (False,))[0]:
        return
    table = sql.Identifier(name)
    await conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)").format(
            table, sql.Identifier(PARENT)
        )
    )
    await conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(PARENT),
            table,
            sql.Literal(day * DAY_MS),
            sql.Literal((day + 1) * DAY_MS),
        )
    )
