"""Configuration: rule thresholds from a TOML file, environment variables and CLI flags.

Precedence, lowest first: the protocol's defaults, the `[rules]` table of the
TOML file (`--config` or `PLAYPROOF_CONFIG`), `PLAYPROOF_RULES_<NAME>`
environment variables, then `--rule NAME=VALUE` flags. The service's limits
come the same way from a `[limits]` table and `PLAYPROOF_LIMITS_<NAME>`. The
panel sources' defaults live here too, where the CLI can read them cheaply.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import msgspec
from msgspec import Meta

from playproof.errors import ConfigError
from playproof.protocol import MAX_BATCH_BYTES, MAX_BATCH_RECORDS
from playproof.rules import Policy

ENV_PREFIX = "PLAYPROOF_RULES_"
LIMITS_ENV_PREFIX = "PLAYPROOF_LIMITS_"

# The panel sources' defaults, for the device's PanelConfig and the `--panel-*` options of
# `playproof player` and `playproof agent` alike: here, not in the device package, because
# importing that costs the command line a quarter of a second at every start.
PANEL_DRM_ROOT: Final = Path("/sys/class/drm")
PANEL_CEC_DEVICE: Final = "/dev/cec0"
PANEL_MDC_PORT: Final = 1515
PANEL_MDC_ID: Final = 0
PANEL_TIMEOUT_S: Final = 3.0


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Bounds on what one device or request may cost the service."""

    screenshot_bytes: Annotated[int, Meta(ge=1)] = 10 * 1024 * 1024
    commit_records: Annotated[int, Meta(ge=1)] = 20_000
    # Requests (HTTP or stream frames) per second per device, and the burst a
    # device may spend at once: a drain after 4 h offline is a few requests.
    device_rate: Annotated[float, Meta(gt=0)] = 50.0
    device_burst: Annotated[int, Meta(ge=1)] = 200
    # Body bytes (HTTP batches and status, stream frames) per second per device, and the
    # burst: a screen sends a few KiB a minute and a drain after 4 h offline about 1 MiB,
    # while a token flooding 1 MiB frames within `device_rate` would take 50 MiB a second
    # of the service's reading and decoding. At least four full batches.
    device_bytes_rate: Annotated[int, Meta(ge=1)] = 1024 * 1024
    device_bytes_burst: Annotated[int, Meta(ge=4 * MAX_BATCH_BYTES)] = 16 * 1024 * 1024
    stream_connections: Annotated[int, Meta(ge=1)] = 50_000
    stream_connections_per_device: Annotated[int, Meta(ge=1)] = 4
    stream_idle_s: Annotated[float, Meta(gt=0)] = 300.0
    body_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    # The open-gaps gauge is counted in the store at most this often, in the background:
    # a flood of /metrics scrapes costs the store nothing.
    metrics_refresh_s: Annotated[float, Meta(gt=0)] = 15.0
    # What the service holds between reading a batch and answering it (raw, decoded,
    # judged, queued for commit), in records and in body bytes: past it, 503 or a frame
    # error with `retry_after_ms` (backlog_retry_ms). docs/operators.md gives the memory
    # ceiling these make. At least two full batches: a device alone may hold half.
    backlog_records: Annotated[int, Meta(ge=2 * MAX_BATCH_RECORDS)] = 100_000
    backlog_bytes: Annotated[int, Meta(ge=4 * MAX_BATCH_BYTES)] = 64 * 1024 * 1024
    backlog_retry_ms: Annotated[int, Meta(ge=1)] = 1000
    # Failed authentications per client address (a token bucket: `auth_failures` at once,
    # then `auth_failure_rate` a second); past them, a token not in the cache is refused
    # 429 before any database read. Successful ones are not counted.
    auth_failures: Annotated[int, Meta(ge=1)] = 30
    auth_failure_rate: Annotated[float, Meta(gt=0)] = 0.2
    # Proxies (comma-separated addresses or CIDR networks) whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    # A device's screenshot bytes per UTC day, in screenshots of `screenshot_bytes`:
    # floor + per_play x the plays it committed that day.
    screenshot_quota_floor: Annotated[int, Meta(ge=0)] = 5
    screenshot_quota_per_play: Annotated[int, Meta(ge=0)] = 2
    # The verifier decides a screen's plays only once they were received this long ago,
    # so that every earlier commit for that screen has landed; at most this many a turn.
    verify_settle_ms: Annotated[int, Meta(ge=0)] = 5_000
    verify_batch: Annotated[int, Meta(ge=1)] = 200
    # Threads verifying version-2 signatures (server/signatures.py); 0: one per core.
    signature_workers: Annotated[int, Meta(ge=0)] = 0
    # The DV360 seller (`sellers/<id>`) of DV360 exports when a request names none;
    # empty: each DV360 export must name one (`seller_id=`, `--seller-id`).
    dv360_seller_id: Annotated[str, Meta(pattern=r"^([A-Za-z0-9._-]{1,64})?$")] = ""
    # Active (unrevoked) public keys a device may hold at once (PROTOCOL.md section 7):
    # registering one more is refused 409 until one is revoked.
    max_device_keys: Annotated[int, Meta(ge=1)] = 4

    def __post_init__(self) -> None:
        """Refuse a trusted proxy that is not an address or a network."""
        proxy_networks(self.trusted_proxies)


def proxy_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """The networks of a comma-separated list of addresses and CIDRs; ValueError if one is not."""
    try:
        return tuple(ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise ValueError(
            f"expected trusted_proxies as addresses or CIDRs, got {text!r}: {exc}"
        ) from None


def _table_from_file(path: Path | None, table: str = "rules") -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    found = doc.get(table, {})
    if not isinstance(found, dict):
        raise ConfigError(f"expected a [{table}] table in {path}, got {type(found).__name__}")
    return found


def _table_from_env(env: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, str]:
    return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}


def _table_from_flags(flags: Sequence[str]) -> dict[str, str]:
    table = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"expected NAME=VALUE, got {flag!r}")
        table[name.strip()] = value.strip()
    return table


S = TypeVar("S", Policy, Limits)


def _convert(table: Mapping[str, Any], kind: type[S], strict: bool, source: str) -> S:
    try:
        return msgspec.convert(dict(table), kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting in {source}: {exc}") from None


def _config_file(config_file: Path | None, env: Mapping[str, str]) -> Path | None:
    if config_file is None and env.get("PLAYPROOF_CONFIG"):
        return Path(env["PLAYPROOF_CONFIG"])
    return config_file


def _load(
    kind: type[S],
    table: str,
    prefix: str,
    config_file: Path | None,
    flags: Sequence[str],
    env: Mapping[str, str] | None,
) -> S:
    env = os.environ if env is None else env
    config_file = _config_file(config_file, env)
    from_file = _table_from_file(config_file, table)
    _convert(from_file, kind, strict=True, source=f"[{table}] of {config_file}")
    textual = {**_table_from_env(env, prefix), **_table_from_flags(flags)}
    # Values from the environment and flags are text: convert them leniently,
    # then check the merged whole strictly once more.
    merged = {**from_file, **msgspec.to_builtins(_partial(textual, kind))}
    return _convert(merged, kind, strict=True, source="environment and flags")


def _partial(textual: Mapping[str, str], kind: type[S]) -> dict[str, Any]:
    known = set(kind.__struct_fields__)
    unknown = sorted(set(textual) - known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; expected one of {sorted(known)}")
    try:
        full = msgspec.convert(dict(textual), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting in environment or flags: {exc}") from None
    return {name: getattr(full, name) for name in textual}


def load_policy(
    config_file: Path | None = None,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Policy:
    """The rule thresholds, merged from defaults, file, environment and `--rule` flags."""
    return _load(Policy, "rules", ENV_PREFIX, config_file, flags, env)


def load_limits(
    config_file: Path | None = None,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Limits:
    """The service's limits, merged from defaults, file, environment and `--limit` flags."""
    return _load(Limits, "limits", LIMITS_ENV_PREFIX, config_file, flags, env)
