"""The pipeline URL, partitions and message ids: what every node and loader must agree on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.errors import ConfigError
from playproof.pipeline.codec import (
    batches_of,
    decode_entry,
    encode_entry,
    entry_for,
    msg_id,
    partition_of,
)
from playproof.pipeline.run import parse_partitions
from playproof.pipeline.settings import duration_ms, parse
from playproof.protocol import ID_PATTERN
from playproof.rules import HOUR_MS, Policy
from tests.stores.pipeline import batch
from tests.support import make_record, now_ms


def test_a_url_names_the_servers_and_defaults_the_rest() -> None:
    settings = parse("jetstream://n1:4222,n2:4222")
    assert settings.servers == ("nats://n1:4222", "nats://n2:4222")
    assert (settings.name, settings.partitions, settings.replicas) == ("playproof", 4, 1)
    assert (settings.window_ms, settings.retention_ms) == (6 * HOUR_MS, 24 * HOUR_MS)
    assert settings.url == "jetstream://n1:4222,n2:4222"
    assert (settings.stream(3), settings.subject(3), settings.durable) == (
        "playproof_3",
        "playproof.3",
        "playproof_loader",
    )


def test_settings_come_from_the_query() -> None:
    settings = parse(
        "jetstream://n1:4222?name=pp_x&partitions=16&replicas=3&window=330m&retention=2d"
        "&timeout=1500ms&batch=500&ack_wait=10s&consumer=warehouse"
    )
    assert (settings.name, settings.partitions, settings.replicas) == ("pp_x", 16, 3)
    assert (settings.window_ms, settings.retention_ms) == (330 * 60_000, 48 * HOUR_MS)
    assert (settings.timeout_ms, settings.batch, settings.ack_wait_ms) == (1500, 500, 10_000)
    assert settings.durable == "warehouse"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://n1:4222", "expected a jetstream://"),
        ("jetstream://?partitions=2", "at least one host:port"),
        ("jetstream://n1?partitions=0", "positive integer for partitions"),
        ("jetstream://n1?replicas=7", "at most 5 replicas"),
        ("jetstream://n1?name=a.b", "name of 1 to 32"),
        ("jetstream://n1?window=six", "expected a duration"),
        ("jetstream://n1?window=8h&retention=7h", "at least the dedupe window"),
        ("jetstream://n1?colour=blue", "unknown pipeline setting 'colour'"),
    ],
)
def test_a_wrong_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(url)


def test_the_window_must_outlast_every_resend_the_rules_accept() -> None:
    parse("jetstream://n1?window=18001s").check_window()
    with pytest.raises(ConfigError, match="at least 18001000 ms"):
        parse("jetstream://n1?window=5h").check_window()
    # Looser rules need a longer window.
    with pytest.raises(ConfigError):
        parse("jetstream://n1").check_window(Policy(offline_limit_ms=8 * HOUR_MS))


def test_durations_take_units() -> None:
    assert [duration_ms(t, "x") for t in ("250ms", "2", "1.5s", "10m", "6h", "1d")] == [
        250,
        2000,
        1500,
        600_000,
        6 * HOUR_MS,
        24 * HOUR_MS,
    ]


def test_loaders_take_partition_lists_and_ranges() -> None:
    settings = parse("jetstream://n1?partitions=8")
    assert parse_partitions(None, settings) == list(range(8))
    assert parse_partitions("0,2-4", settings) == [0, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"in 0\.\.7"):
        parse_partitions("6-9", settings)
    with pytest.raises(ConfigError, match="such as 0,2 or 0-3"):
        parse_partitions("one", settings)


ids = st.from_regex(ID_PATTERN.removesuffix("$").removeprefix("^") + r"\Z", fullmatch=True)


@given(a=st.tuples(ids, ids, st.integers(1, 2**53 - 1)), b=st.tuples(ids, ids, st.integers(1)))
def test_message_ids_are_injective(a: tuple[str, str, int], b: tuple[str, str, int]) -> None:
    """Two keys share a Nats-Msg-Id only when they are the same key (ids never hold `/`)."""
    assert (msg_id(a) == msg_id(b)) == (a == b)
    assert msg_id(a, 1) != msg_id(a) and msg_id(a, 1) != msg_id(b, 2)


def test_a_device_always_lands_in_the_same_partition() -> None:
    # crc32, not Python's salted hash: the same in every process, machine and version.
    assert [partition_of(d, 16) for d in ("scr-0042", "scr-0043", "a")] == [11, 13, 3]


def test_messages_rebuild_the_batches_the_node_judged() -> None:
    now = now_ms()
    first = batch([make_record(seq=1, end_ts=now - 1000), {"seq": 2, "v": 1}], received_at=now)
    second = batch([make_record(seq=3, end_ts=now - 5 * HOUR_MS)], received_at=now + 1)
    entries = [
        decode_entry(encode_entry(entry_for(write, item, verdict)))
        for write in (first, second)
        for item, verdict in write.judged
    ]
    assert batches_of(entries) == [first, second]
