"""The service's parts wired together: store, authenticator, committer, ingestor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from playproof import errors
from playproof.config import Limits
from playproof.pipeline import Pipeline
from playproof.rules import DEFAULT_POLICY, Policy
from playproof.server.auth import Authenticator
from playproof.server.backlog import Backlog
from playproof.server.committer import GroupCommitter
from playproof.server.guard import AuthGuard
from playproof.server.ingest import Clock, Ingestor, wall_clock_ms
from playproof.server.limits import ConnectionLimiter, RateLimiter
from playproof.server.metrics import Metrics
from playproof.server.operators import OperatorAuth
from playproof.server.quota import ScreenshotQuota
from playproof.server.signatures import SignatureChecker
from playproof.server.verifier import Verifier
from playproof.stores.base import Store

log = logging.getLogger(__name__)

# Probes ask often: a failed health check is logged at most once in this long.
HEALTH_LOG_S: Final = 60.0


@dataclass
class Service:
    """Everything a running service holds; the ASGI app reaches it through app.state."""

    store: Store
    policy: Policy = DEFAULT_POLICY
    clock: Clock = wall_clock_ms
    limits: Limits = field(default_factory=Limits)
    # When given (`serve --pipeline`), records are committed into it instead of the
    # store; the store still serves devices, status, screenshots and reports.
    pipeline: Pipeline | None = None
    # Set only when `clock` is a simulated one (playproof serve --sim-clock): /healthz shows it.
    clock_info: dict[str, Any] | None = None
    # The verifier runs in the service unless it runs apart (`playproof verify`).
    verify: bool = True

    def __post_init__(self) -> None:
        # The store applies the cap on open gaps as it commits: it is policy, held here.
        self.store.max_open_gaps = self.policy.max_open_gaps
        self.metrics = Metrics()
        self.auth = Authenticator(self.store)
        self.operator_auth = OperatorAuth(self.store)
        sink = self.pipeline or self.store
        self.committer = GroupCommitter(
            sink,
            self.limits.commit_records,
            sink.commit_lanes,
            observe=self.metrics.committed,
        )
        self.rate = RateLimiter(self.limits.device_rate, self.limits.device_burst)
        self.bytes_rate = RateLimiter(
            self.limits.device_bytes_rate, self.limits.device_bytes_burst, unit="bytes"
        )
        self.connections = ConnectionLimiter(
            self.limits.stream_connections, self.limits.stream_connections_per_device
        )
        limits = self.limits
        self.guard = AuthGuard(
            limits.auth_failures,
            limits.auth_failure_rate,
            limits.trusted_proxies,
            on_lookup=self.metrics.token_lookups.inc,
        )
        self.backlog = Backlog(
            limits.backlog_records, limits.backlog_bytes, limits.backlog_retry_ms / 1000
        )
        self.metrics.backlog_records.set_function(lambda: self.backlog.records)
        self.metrics.backlog_bytes.set_function(lambda: self.backlog.bytes)
        self.quota = ScreenshotQuota(
            self.store,
            limits.screenshot_bytes,
            limits.screenshot_quota_floor,
            limits.screenshot_quota_per_play,
            self.clock,
        )
        # Version-2 signatures, verified on threads across the cores (server/signatures.py).
        self.signatures = SignatureChecker(limits.signature_workers or None, self.metrics)
        self.ingestor = Ingestor(
            self.store,
            self.committer,
            self.policy,
            self.clock,
            self.metrics,
            self.backlog,
            self.signatures,
        )
        self.verifier = Verifier(self.store, self.clock, self.policy, self.limits, self.metrics)
        self._gauges: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._health_logged_at = float("-inf")
        self._health_failures = 0

    async def start(self) -> None:
        """Open the store (migrating it) and start committing."""
        await self.store.open()
        if self.pipeline is not None:
            try:
                await self.pipeline.open()
            except BaseException:
                await self.store.close()
                raise
        self.committer.start()
        await self._count_gaps()
        self._gauges = asyncio.create_task(self._refresh_gauges())
        self._watch = asyncio.create_task(self.auth.watch())
        if self.verify:
            self.verifier.start()
        if self.clock_info is not None:
            log.warning("SIMULATED CLOCK, for simulations only: %s", self.clock_info)

    async def stop(self) -> None:
        """Stop committing and close the store."""
        for task in (self._gauges, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.verifier.stop()
        await self.committer.stop()
        await self.signatures.stop()
        if self.pipeline is not None:
            await self.pipeline.close()
        await self.store.close()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store (and the pipeline, if any) answer now."""
        await self.store.ping()
        if self.pipeline is not None:
            await self.pipeline.ping()

    def unhealthy(self, exc: errors.StoreError) -> None:
        """Log why /healthz answers 503, which says no more: once a minute at most."""
        now = time.monotonic()
        self._health_failures += 1
        if now - self._health_logged_at >= HEALTH_LOG_S:
            log.warning(
                "health check failed: %s (%d failed checks since the last such warning)",
                exc,
                self._health_failures,
            )
            self._health_logged_at, self._health_failures = now, 0

    async def _count_gaps(self) -> None:
        # On an outage the gauge keeps its last value; /healthz tells the outage.
        with contextlib.suppress(errors.StoreError):
            self.metrics.open_gaps.set(await self.store.gap_count())

    async def _refresh_gauges(self) -> None:
        """Recount open gaps every `metrics_refresh_s`: a scrape of /metrics reads gauges only."""
        while True:
            await asyncio.sleep(self.limits.metrics_refresh_s)
            try:
                await self._count_gaps()
            except Exception:  # a bug: logged, and the gauge is tried again next time
                log.exception("counting open gaps for /metrics failed")
