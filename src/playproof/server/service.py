"""The service's parts wired together: store, authenticator, committer, ingestor."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from playproof.config import Limits
from playproof.pipeline import Pipeline
from playproof.rules import DEFAULT_POLICY, Policy
from playproof.server.auth import Authenticator
from playproof.server.committer import GroupCommitter
from playproof.server.ingest import Clock, Ingestor, wall_clock_ms
from playproof.server.limits import ConnectionLimiter, RateLimiter
from playproof.server.metrics import Metrics
from playproof.server.operators import OperatorAuth
from playproof.stores.base import Store

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
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
        self.connections = ConnectionLimiter(
            self.limits.stream_connections, self.limits.stream_connections_per_device
        )
        self.ingestor = Ingestor(self.store, self.committer, self.policy, self.clock, self.metrics)

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
        if self.clock_info is not None:
            log.warning("SIMULATED CLOCK, for simulations only: %s", self.clock_info)

    async def stop(self) -> None:
        """Stop committing and close the store."""
        await self.committer.stop()
        if self.pipeline is not None:
            await self.pipeline.close()
        await self.store.close()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store (and the pipeline, if any) answer now."""
        await self.store.ping()
        if self.pipeline is not None:
            await self.pipeline.ping()
