"""The pipeline's settings, all carried by one URL so that every node and loader agrees.

`jetstream://host:port[,host:port...]?name=playproof&partitions=4&replicas=3&...`
names the NATS servers (several for a cluster: a client fails over between
them) and the settings every process of one deployment must share: streams,
partitions, replication, the dedupe window and the loaders' consumer.
Durations take a unit: `500ms`, `30s`, `10m`, `6h`, `2d` (bare numbers are seconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from playproof.errors import ConfigError
from playproof.rules import DEFAULT_POLICY, HOUR_MS, Policy

SCHEME: Final = "jetstream://"
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS}
_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")


def duration_ms(text: str, name: str) -> int:
    """A duration such as `30s` or `6h` in milliseconds; ConfigError saying what was wrong."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"expected a duration such as 500ms, 30s, 10m, 6h for {name}, got {text!r}"
        )
    return round(float(match.group(1)) * _UNITS[match.group(2) or "s"])


@dataclass(frozen=True)
class Settings:
    """What one deployment's ingest nodes and loaders share."""

    servers: tuple[str, ...]
    # Streams are `<name>_<p>`, subjects `<name>.<p>`, the loaders' durable `<name>_loader`.
    name: str = "playproof"
    # Fixed for a deployment: a device's records always go to one partition.
    partitions: int = 4
    # 3 in production (a quorum survives one node); 1 on a single development server.
    replicas: int = 1
    # The Nats-Msg-Id dedupe window; it must outlast every resend the rules still accept.
    window_ms: int = 6 * HOUR_MS
    # How long records stay in the stream: the window, plus the time loaders may be down.
    retention_ms: int = 24 * HOUR_MS
    # How long a publish or lookup may take before the batch is answered 503.
    timeout_ms: int = 5_000
    # Loader: records per fetch, and at most that many unacknowledged per partition.
    batch: int = 2_000
    # Loader: after this long without an ack a batch goes to another loader.
    ack_wait_ms: int = 30_000
    # The loaders' durable consumer (default `<name>_loader`); another name is another
    # group of loaders that reads every record again (into another database, say).
    consumer: str | None = None

    @property
    def url(self) -> str:
        """The URL without settings, fit for messages."""
        return SCHEME + ",".join(s.removeprefix("nats://") for s in self.servers)

    def stream(self, partition: int) -> str:
        """The stream holding one partition."""
        return f"{self.name}_{partition}"

    def subject(self, partition: int) -> str:
        """The subject every message of one partition is published on."""
        return f"{self.name}.{partition}"

    @property
    def durable(self) -> str:
        """The loaders' durable consumer name (one per partition stream)."""
        return self.consumer or f"{self.name}_loader"

    def check_window(self, policy: Policy = DEFAULT_POLICY) -> None:
        """ConfigError unless the window outlasts every resend the rules would accept.

        A record accepted once can come back accepted again (its ack was lost)
        at most offline limit + twice the skew limit + the future tolerance
        later: the dedupe window must cover that, or a resend would not be
        recognised as a duplicate.
        """
        needed = policy.offline_limit_ms + 2 * policy.skew_reject_ms + policy.future_tolerance_ms
        if self.window_ms < needed:
            raise ConfigError(
                f"expected a dedupe window of at least {needed} ms (offline limit + 2 x skew "
                f"limit + future tolerance) for these rules, got window={self.window_ms} ms"
            )


_INTS: Final = ("partitions", "replicas", "batch")
_DURATIONS: Final = {
    "window": "window_ms",
    "retention": "retention_ms",
    "timeout": "timeout_ms",
    "ack_wait": "ack_wait_ms",
}


def parse(url: str) -> Settings:
    """Settings from a `jetstream://` URL; ConfigError saying what is wrong."""
    if not url.startswith(SCHEME):
        raise ConfigError(f"expected a jetstream://host:port[,host:port...] URL, got {url!r}")
    parts = urlsplit(url)
    hosts = [h.strip() for h in parts.netloc.split(",") if h.strip()]
    if not hosts:
        raise ConfigError(f"expected at least one host:port in {url!r}")
    values: dict[str, object] = {"servers": tuple(f"nats://{h}" for h in hosts)}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        values.update(_setting(key, value))
    settings = Settings(**values)  # type: ignore[arg-type]
    _validate(settings)
    return settings


def _setting(key: str, value: str) -> dict[str, object]:
    if key in ("name", "consumer"):
        if not NAME_PATTERN.fullmatch(value):
            raise ConfigError(f"expected {key} of 1 to 32 of A-Z a-z 0-9 _ -, got {value!r}")
        return {key: value}
    if key in _INTS:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"expected a positive integer for {key}, got {value!r}")
        return {key: int(value)}
    if key in _DURATIONS:
        return {_DURATIONS[key]: duration_ms(value, key)}
    known = ["name", "consumer", *_INTS, *_DURATIONS]
    raise ConfigError(f"unknown pipeline setting {key!r}; expected one of {known}")


def _validate(settings: Settings) -> None:
    if settings.replicas > 5:
        raise ConfigError(
            f"expected at most 5 replicas (JetStream's limit), got {settings.replicas}"
        )
    if settings.retention_ms < settings.window_ms:
        raise ConfigError(
            f"expected retention ({settings.retention_ms} ms) to be at least the dedupe "
            f"window ({settings.window_ms} ms): a duplicate is told apart by reading the original"
        )


def describe(settings: Settings) -> str:
    """The settings as one line, for logs."""
    shown = [f"{f.name}={getattr(settings, f.name)}" for f in fields(settings)]
    return ", ".join(shown)
