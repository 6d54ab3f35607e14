"""Metrics counted in plain integers and folded into samples on scrape (issue 17) still
count every frame, every record and every commit, under the series' old names."""

from __future__ import annotations

from playproof.protocol import Ack
from playproof.server.metrics import Metrics


def test_every_answered_record_and_batch_is_counted_when_scraped() -> None:
    metrics = Metrics()
    accepted = Ack(seq=1, result="accepted", status="valid", quality=100)
    stale = Ack(seq=2, result="rejected", reason="stale")
    for _ in range(1000):  # 1000 one-record stream frames
        metrics.answered([accepted], "stream", 0.0015)
    metrics.answered([accepted, stale, Ack(seq=3, result="duplicate")], "http", 0.2)
    metrics.committed(250, 250, 0.004)
    metrics.committed(1, 1, 0.0005)
    sample = metrics.registry.get_sample_value

    assert sample("playproof_records_total", {"result": "accepted", "reason": ""}) == 1001
    assert sample("playproof_records_total", {"result": "rejected", "reason": "stale"}) == 1
    assert sample("playproof_records_total", {"result": "duplicate", "reason": ""}) == 1
    assert sample("playproof_ack_latency_seconds_count", {"transport": "stream"}) == 1000
    assert sample("playproof_ack_latency_seconds_count", {"transport": "http"}) == 1
    # `le` buckets: 1.5 ms is under 2 ms, not under 1 ms.
    stream_le = {"transport": "stream"}
    assert sample("playproof_ack_latency_seconds_bucket", {**stream_le, "le": "0.001"}) == 0
    assert sample("playproof_ack_latency_seconds_bucket", {**stream_le, "le": "0.002"}) == 1000
    assert sample("playproof_ack_latency_seconds_bucket", {**stream_le, "le": "+Inf"}) == 1000
    assert sample("playproof_batch_records_sum", {"transport": "stream"}) == 1000
    assert sample("playproof_batch_records_sum", {"transport": "http"}) == 3
    # A value on a bound counts in that bound's bucket, as prometheus_client's did.
    assert sample("playproof_batch_records_bucket", {"transport": "stream", "le": "1.0"}) == 1000
    assert sample("playproof_commit_batches_count") == 2
    assert sample("playproof_commit_batches_sum") == 251
    assert sample("playproof_commit_records_bucket", {"le": "200.0"}) == 1
    assert sample("playproof_commit_records_bucket", {"le": "500.0"}) == 2
    assert sample("playproof_commit_seconds_count") == 2
    assert metrics.live.series(60, 60)["accepted"][-1] == 1001


def test_the_scrape_names_the_series_as_before() -> None:
    metrics = Metrics()
    metrics.answered([Ack(seq=1, result="accepted")], "stream", 0.01)
    metrics.committed(1, 1, 0.01)
    text = metrics.render().decode()
    for line in (
        "# TYPE playproof_records_total counter",
        'playproof_records_total{reason="",result="accepted"} 1.0',
        "# TYPE playproof_ack_latency_seconds histogram",
        'playproof_ack_latency_seconds_bucket{le="0.01",transport="stream"} 1.0',
        'playproof_ack_latency_seconds_count{transport="stream"} 1.0',
        'playproof_commit_records_bucket{le="1.0"} 1.0',
        "playproof_commit_batches_count 1.0",
    ):
        assert line in text, line
