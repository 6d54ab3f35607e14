"""Prometheus metrics of the ingest service, counted per batch so the hot path stays cheap."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from playproof.protocol import Ack, Status
from playproof.server.live import Live

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000)


class Metrics:
    """The service's metrics in a registry of its own (one per service, tests need several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.records = Counter(
            "playproof_records",
            "Records answered, by result and reject reason",
            ["result", "reason"],
            registry=reg,
        )
        self.ack_latency = Histogram(
            "playproof_ack_latency_seconds",
            "From a batch's receipt to its ack",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.commit_latency = Histogram(
            "playproof_commit_seconds",
            "One group commit, in the store",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.commit_records = Histogram(
            "playproof_commit_records",
            "Records per group commit",
            buckets=SIZE_BUCKETS,
            registry=reg,
        )
        self.commit_batches = Histogram(
            "playproof_commit_batches",
            "Batches per group commit",
            buckets=SIZE_BUCKETS,
            registry=reg,
        )
        self.batch_records = Histogram(
            "playproof_batch_records",
            "Records per batch",
            ["transport"],
            buckets=SIZE_BUCKETS,
            registry=reg,
        )
        self.connections = Gauge(
            "playproof_stream_connections",
            "Open stream connections (connected screens)",
            registry=reg,
        )
        self.rejected_requests = Counter(
            "playproof_requests_refused",
            "Whole requests or frames refused, by HTTP status",
            ["status"],
            registry=reg,
        )
        self.device_queue = Gauge(
            "playproof_device_queued_records",
            "Records the devices last reported queued, summed over devices",
            registry=reg,
        )
        self.device_evictions = Counter(
            "playproof_device_evicted_records",
            "Records devices reported evicted",
            registry=reg,
        )
        self.verification_lag = Gauge(
            "playproof_verification_lag_seconds",
            "Age of the oldest valid play waiting for its verification decision",
            registry=reg,
        )
        self.verification_decisions = Counter(
            "playproof_verification_decisions",
            "Plays the verifier decided, by status",
            ["status"],
            registry=reg,
        )
        self.open_gaps = Gauge(
            "playproof_open_gaps",
            "Open sequence gaps over all journals",
            registry=reg,
        )
        self.token_lookups = Counter(
            "playproof_token_lookups",
            "Callers' tokens looked up in the store (cache misses), failed ones included",
            registry=reg,
        )
        self.backlog_records = Gauge(
            "playproof_backlog_records",
            "Records held between reading a batch and answering it (limit: backlog_records)",
            registry=reg,
        )
        self.backlog_bytes = Gauge(
            "playproof_backlog_bytes",
            "Body bytes held between reading a batch and answering it (limit: backlog_bytes)",
            registry=reg,
        )
        self._queues: dict[str, int] = {}
        self._queued = 0
        self._records: dict[tuple[str, str], Counter] = {}
        self.live = Live()

    def answered(self, acks: Sequence[Ack], transport: str, seconds: float) -> None:
        """Count one batch's acks and its latency."""
        # UNSET is falsy: an ack without a reason counts under "".
        tally = Tally([(a.result, a.reason or "") for a in acks])
        for key, n in tally.items():
            child = self._records.get(key)
            if child is None:
                child = self._records[key] = self.records.labels(*key)
            child.inc(n)
        self.live.add(tally.items())
        self.batch_records.labels(transport).observe(len(acks))
        self.ack_latency.labels(transport).observe(seconds)

    def committed(self, batches: int, records: int, seconds: float) -> None:
        """Observe one group commit (the committer calls this)."""
        self.commit_batches.observe(batches)
        self.commit_records.observe(records)
        self.commit_latency.observe(seconds)

    def status(self, status: Status) -> None:
        """Keep a device's reported queue depth and evictions."""
        depth = status.queue_depth or 0
        self._queued += depth - self._queues.get(status.device_id, 0)
        self._queues[status.device_id] = depth
        self.device_queue.set(self._queued)
        if status.evicted:
            self.device_evictions.inc(status.evicted)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
