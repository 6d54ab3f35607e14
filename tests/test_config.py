"""Rule thresholds from defaults, a TOML file, environment variables and --rule flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from playproof.config import load_policy
from playproof.errors import ConfigError
from playproof.rules import DEFAULT_POLICY, HOUR_MS


def test_defaults_are_the_protocols_values() -> None:
    policy = load_policy(env={})
    assert policy == DEFAULT_POLICY
    assert (
        policy.valid_percent,
        policy.offline_limit_ms,
        policy.skew_flag_ms,
        policy.skew_reject_ms,
    ) == (80, 4 * HOUR_MS, 600_000, 1_800_000)
    assert policy.future_tolerance_ms == 1000


def test_file_then_environment_then_flags_each_override_the_last(tmp_path: Path) -> None:
    config = tmp_path / "playproof.toml"
    config.write_text(
        "[rules]\noffline_limit_ms = 7200000\nvalid_percent = 90\nskew_flag_ms = 1000\n"
    )
    env = {"PLAYPROOF_RULES_VALID_PERCENT": "95", "PLAYPROOF_RULES_SKEW_FLAG_MS": "2000"}
    policy = load_policy(config, ["skew_flag_ms=3000"], env=env)
    assert policy.offline_limit_ms == 7_200_000
    assert policy.valid_percent == 95
    assert policy.skew_flag_ms == 3000


def test_the_bounds_on_durations_and_timestamps_are_settings_like_the_others() -> None:
    defaults = load_policy(env={})
    assert (defaults.max_duration_ms, defaults.min_timestamp_ms, defaults.max_timestamp_ms) == (
        24 * HOUR_MS,
        946_684_800_000,  # 2000-01-01T00:00:00Z
        4_102_444_800_000,  # 2100-01-01T00:00:00Z
    )
    env = {"PLAYPROOF_RULES_MIN_TIMESTAMP_MS": "1000"}
    policy = load_policy(None, ["max_duration_ms=3600000", "max_timestamp_ms=2000"], env=env)
    assert (policy.max_duration_ms, policy.min_timestamp_ms, policy.max_timestamp_ms) == (
        HOUR_MS,
        1000,
        2000,
    )


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[rules]\nstale_unused = 1\n")
    with pytest.raises(ConfigError, match="stale_unused"):
        load_policy(env={"PLAYPROOF_CONFIG": str(config)})


@pytest.mark.parametrize(
    ("flags", "env", "fragment"),
    [
        (["offline_limit_ms=soon"], {}, "offline_limit_ms"),
        (["no_such_rule=1"], {}, "no_such_rule"),
        (["missing-equals"], {}, "NAME=VALUE"),
        ([], {"PLAYPROOF_RULES_VALID_PERCENT": "150"}, "valid_percent"),
        (["skew_flag_ms=5000000"], {}, "skew_flag_ms"),
        (["penalty_overlong=-1"], {}, "penalty_overlong"),
        (["max_duration_ms=0"], {}, "max_duration_ms"),
        (["max_duration_ms=86400001"], {}, "max_duration_ms"),
        (["min_timestamp_ms=5000000000000"], {}, "min_timestamp_ms"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    flags: list[str], env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_policy(None, flags, env=env)


def test_a_bad_file_is_refused_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[rules\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(broken, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "absent.toml", env={})
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('[rules]\nvalid_percent = "eighty"\n')
    with pytest.raises(ConfigError, match="valid_percent"):
        load_policy(wrong_type, env={})


def test_limits_come_from_the_limits_table_environment_and_flags(tmp_path: Path) -> None:
    from playproof.config import Limits, load_limits

    config = tmp_path / "playproof.toml"
    config.write_text(
        "[limits]\ndevice_rate = 5.0\ndevice_burst = 10\n[rules]\nvalid_percent = 90\n"
    )
    limits = load_limits(config, ["device_burst=20"], env={"PLAYPROOF_LIMITS_STREAM_IDLE_S": "60"})
    assert (limits.device_rate, limits.device_burst, limits.stream_idle_s) == (5.0, 20, 60.0)
    assert load_limits(env={}) == Limits()
    with pytest.raises(ConfigError, match="device_rate"):
        load_limits(None, ["device_rate=0"], env={})
