"""Prometheus metrics of the ingest service, counted per batch so the hot path stays cheap.

What is counted on every batch and every group commit (records by result, ack latency,
batch and commit sizes) is kept in plain integers and turned into Prometheus samples only
when /metrics is scraped (`Tallies`, `Folded`): a prometheus_client `inc` or `observe`
takes a lock and walks label dictionaries, several microseconds each, which a 1-record
stream frame paid five times (issue 17). The series and their names are the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from playproof.protocol import Ack, Status
from playproof.server.live import Live

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000)


class Metrics:
    """The service's metrics in a registry of its own (one per service, tests need several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.records = Tallies(
            "playproof_records",
            "Records answered, by result and reject reason",
            ("result", "reason"),
        )
        self.ack_latency = Folded(
            "playproof_ack_latency_seconds",
            "From a batch's receipt to its ack",
            LATENCY_BUCKETS,
            ("transport",),
        )
        self.commit_latency = Folded(
            "playproof_commit_seconds", "One group commit, in the store", LATENCY_BUCKETS
        )
        self.commit_records = Folded(
            "playproof_commit_records", "Records per group commit", SIZE_BUCKETS
        )
        self.commit_batches = Folded(
            "playproof_commit_batches", "Batches per group commit", SIZE_BUCKETS
        )
        self.batch_records = Folded(
            "playproof_batch_records", "Records per batch", SIZE_BUCKETS, ("transport",)
        )
        for folded in (
            self.records,
            self.ack_latency,
            self.commit_latency,
            self.commit_records,
            self.commit_batches,
            self.batch_records,
        ):
            reg.register(folded)
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
        # Protocol version 2 (server/signatures.py): `good` and `bad` were verified (Ed25519),
        # `refused` needed no verifying (version 1 from a device that signs, unknown or
        # revoked key).
        self.signature_checks = Counter(
            "playproof_signature_checks",
            "Records whose signature was checked at ingest, by result: good, bad, refused",
            ["result"],
            registry=reg,
        )
        self._queues: dict[str, int] = {}
        self._queued = 0
        self.live = Live()

    def answered(self, acks: Sequence[Ack], transport: str, seconds: float) -> None:
        """Count one batch's acks and its latency."""
        counts = self.records.counts
        tally: list[tuple[tuple[str, str], int]] = []
        for ack in acks:
            # UNSET is falsy: an ack without a reason counts under "".
            key = (ack.result, ack.reason or "")
            counts[key] = counts.get(key, 0) + 1
            tally.append((key, 1))
        self.live.add(tally)
        labels = (transport,)
        self.batch_records.observe(len(acks), labels)
        self.ack_latency.observe(seconds, labels)

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


class Tallies(Collector):
    """A counter by label values, kept in a dict of ints and read when scraped."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[str, ...], int] = {}

    def describe(self) -> list[Metric]:
        """The family, without samples (for the registry's duplicate check)."""
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        """The counts as Prometheus samples (`<name>_total`)."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in list(self.counts.items()):
            family.add_metric(list(labels), count)
        yield family


class Folded(Collector):
    """A histogram kept as per-bucket ints, turned into cumulative samples when scraped.

    Observed on the event loop only (batches, commits); a scrape reads a snapshot.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = tuple(float(b) for b in buckets)
        # Per label values: a count per bucket (the last is +Inf), then the sum.
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        """Count one observation (`le` buckets: a value on a bound counts in that bucket)."""
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def describe(self) -> list[Metric]:
        """The family, without samples."""
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        """Cumulative buckets, `_count` and `_sum`, per label values."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for labels, row in list(self.series.items()):
            row = list(row)
            cumulative, buckets = 0.0, []
            for le, count in zip(les, row[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, row[-1])
        yield family


def _go_float(value: float) -> str:
    # How prometheus_client writes a bucket bound (`le`): 1 as "1.0", 0.0005 as "0.0005",
    # 10000 as "10000.0", so that the series are named as the Histogram named them.
    return repr(float(value))
