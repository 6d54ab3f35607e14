"""The service's parts wired together: store, authenticator, committer, ingestor."""

from __future__ import annotations

from dataclasses import dataclass, field

from playproof.config import Limits
from playproof.rules import DEFAULT_POLICY, Policy
from playproof.server.auth import Authenticator
from playproof.server.committer import GroupCommitter
from playproof.server.ingest import Clock, Ingestor, wall_clock_ms
from playproof.server.limits import ConnectionLimiter, RateLimiter
from playproof.server.metrics import Metrics
from playproof.stores.base import Store


@dataclass
class Service:
    """Everything a running service holds; the ASGI app reaches it through app.state."""

    store: Store
    policy: Policy = DEFAULT_POLICY
    clock: Clock = wall_clock_ms
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.metrics = Metrics()
        self.auth = Authenticator(self.store)
        self.committer = GroupCommitter(
            self.store,
            self.limits.commit_records,
            self.store.commit_lanes,
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
        self.committer.start()

    async def stop(self) -> None:
        """Stop committing and close the store."""
        await self.committer.stop()
        await self.store.close()
