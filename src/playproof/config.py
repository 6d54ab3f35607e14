"""Configuration: rule thresholds from a TOML file, environment variables and CLI flags.

Precedence, lowest first: the protocol's defaults, the `[rules]` table of the
TOML file (`--config` or `PLAYPROOF_CONFIG`), `PLAYPROOF_RULES_<NAME>`
environment variables, then `--rule NAME=VALUE` flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from playproof.errors import ConfigError
from playproof.rules import Policy

ENV_PREFIX = "PLAYPROOF_RULES_"


def _table_from_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    rules = doc.get("rules", {})
    if not isinstance(rules, dict):
        raise ConfigError(f"expected a [rules] table in {path}, got {type(rules).__name__}")
    return rules


def _table_from_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def _table_from_flags(flags: Sequence[str]) -> dict[str, str]:
    table = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"expected --rule NAME=VALUE, got {flag!r}")
        table[name.strip()] = value.strip()
    return table


def _convert(table: Mapping[str, Any], strict: bool, source: str) -> Policy:
    try:
        return msgspec.convert(dict(table), Policy, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid rule setting in {source}: {exc}") from None


def load_policy(
    config_file: Path | None = None,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Policy:
    """The rule thresholds, merged from defaults, file, environment and flags."""
    env = os.environ if env is None else env
    if config_file is None and env.get("PLAYPROOF_CONFIG"):
        config_file = Path(env["PLAYPROOF_CONFIG"])
    from_file = _table_from_file(config_file)
    _convert(from_file, strict=True, source=str(config_file))
    textual = {**_table_from_env(env), **_table_from_flags(flags)}
    # Values from the environment and flags are text: convert them leniently,
    # then check the merged whole strictly once more.
    merged = {**from_file, **msgspec.to_builtins(_partial(textual))}
    return _convert(merged, strict=True, source="environment and flags")


def _partial(textual: Mapping[str, str]) -> dict[str, Any]:
    known = set(Policy.__struct_fields__)
    unknown = sorted(set(textual) - known)
    if unknown:
        raise ConfigError(f"unknown rule setting {unknown[0]!r}; expected one of {sorted(known)}")
    try:
        full = msgspec.convert(dict(textual), Policy, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid rule setting in environment or flags: {exc}") from None
    return {name: getattr(full, name) for name in textual}
