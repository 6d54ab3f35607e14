"""Query parameters of the operators' routes: parsed strictly, each error naming what was expected.

Every bad parameter is a `ProtocolError` (HTTP 400) saying what was expected and
what came; an unknown parameter is one too, so that a misspelt filter never
silently widens a billing export to everything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.datastructures import QueryParams

from playproof.errors import ProtocolError
from playproof.protocol import END_REASONS, ID_PATTERN, MAX_INT, PlayStatus, RejectReason
from playproof.stores.verdicts import DECIDED, PENDING
from playproof.verification import REASONS

MAX_RANGE_DAYS: Final = 3660
ID: Final = re.compile(ID_PATTERN)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "status": get_args(PlayStatus),
    "end_reason": END_REASONS,
    "reason": get_args(RejectReason),
    "verification": (PENDING, *DECIDED),
    "verification_reason": REASONS,
}


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


class Params:
    """One request's query parameters: each read at most once, the rest refused at the end."""

    def __init__(self, query: QueryParams | Mapping[str, str], allowed: Iterable[str]) -> None:
        items = query.multi_items() if isinstance(query, QueryParams) else list(query.items())
        self._values: dict[str, str] = {}
        allowed = tuple(allowed)
        for name, value in items:
            if name not in allowed:
                raise ProtocolError(
                    f"expected query parameters among {', '.join(allowed)}, got {_shown(name)}"
                )
            if name in self._values:
                raise ProtocolError(f"expected one value for {name!r}, got several")
            self._values[name] = value

    def get(self, name: str) -> str | None:
        """The raw value of a parameter, or None when absent."""
        return self._values.get(name)

    def ids(self, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """The filters given among `names`: protocol ids, or enum values where one applies."""
        found = []
        for name in names:
            value = self._values.get(name)
            if value is not None:
                found.append(
                    (name, enum_value(name, value) if name in ENUMS else id_value(name, value))
                )
        return tuple(found)

    def limit(self, default: int, maximum: int) -> int:
        """`limit`: an integer from 1 to `maximum`, `default` when absent."""
        value = self._values.get("limit")
        if value is None:
            return default
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= maximum:
            raise ProtocolError(f"expected `limit` from 1 to {maximum}, got {_shown(value)}")
        return int(value)


def id_value(name: str, value: str) -> str:
    """`value` if it is a protocol id, else a 400 naming the parameter."""
    if not ID.fullmatch(value):
        raise ProtocolError(
            f"expected `{name}` of 1 to 64 characters of A-Z a-z 0-9 . _ : -, got {_shown(value)}"
        )
    return value


def enum_value(name: str, value: str) -> str:
    """`value` if it is one of the parameter's allowed values."""
    if value not in ENUMS[name]:
        raise ProtocolError(
            f"expected `{name}` among {', '.join(ENUMS[name])}, got {_shown(value)}"
        )
    return value


def zone(value: str | None) -> tzinfo:
    """`tz`: `UTC` (the default) or an IANA time zone name such as `Europe/Paris`."""
    if value is None or value in ("UTC", "Z", "Etc/UTC"):
        return UTC
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ProtocolError(
            f"expected `tz` as UTC or an IANA time zone name such as Europe/Paris, "
            f"got {_shown(value)}"
        ) from None


def millis(when: datetime) -> int:
    """An aware datetime as epoch milliseconds (below a millisecond: floored)."""
    return (when - EPOCH) // timedelta(milliseconds=1)


def parse_time(name: str, value: str, tz: tzinfo = UTC) -> int:
    """An RFC 3339 time (`2026-11-01T00:00:00Z`), or a date meaning its midnight in `tz`."""
    expected = f"expected `{name}` as an RFC 3339 time such as 2026-11-01T00:00:00Z, or a date"
    try:
        if len(value) == 10:
            when = datetime.combine(date.fromisoformat(value), time(), tz)
        else:
            when = datetime.fromisoformat(value)
        ms = millis(when) if when.tzinfo is not None else None
    except (ValueError, OverflowError):
        raise ProtocolError(f"{expected}, got {_shown(value)}") from None
    if when.tzinfo is None:
        raise ProtocolError(f"{expected} with its offset (Z or +hh:mm), got {_shown(value)}")
    if ms is None or not 0 <= ms <= MAX_INT:
        raise ProtocolError(f"{expected} from 1970 on, got {_shown(value)}")
    return ms


def time_range(
    params: Params, tz: tzinfo = UTC, required: bool = False, default_ms: int | None = None
) -> tuple[int | None, int | None]:
    """`from` and `to` as epoch ms, [from, to); `default_ms` before `to` when `from` is absent."""
    raw_from, raw_to = params.get("from"), params.get("to")
    if required and (raw_from is None or raw_to is None):
        missing = "from" if raw_from is None else "to"
        raise ProtocolError(f"expected `{missing}` (an RFC 3339 time), got none")
    start = None if raw_from is None else parse_time("from", raw_from, tz)
    end = None if raw_to is None else parse_time("to", raw_to, tz)
    if start is None and end is not None and default_ms is not None:
        start = max(0, end - default_ms)
    if start is not None and end is not None:
        if start >= end:
            raise ProtocolError(f"expected `from` before `to`, got {raw_from} and {raw_to}")
        if end - start > MAX_RANGE_DAYS * 86_400_000:
            raise ProtocolError(f"expected a range of at most {MAX_RANGE_DAYS} days")
    return start, end


def group_by(value: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """`group_by`: comma-separated names among `allowed`, each at most once (absent: none).

    Present but empty is refused, as the document's array of names says: a caller who
    sent `group_by=` meant some grouping, and must not silently get another.
    """
    if value is None:
        return ()
    names = tuple(n.strip() for n in value.split(","))
    for name in names:
        if name not in allowed:
            raise ProtocolError(
                f"expected `group_by` names among {', '.join(allowed)}, got {_shown(name)}"
            )
    if len(set(names)) != len(names):
        raise ProtocolError(f"expected each `group_by` name once, got {_shown(value)}")
    return names


# --- cursors ---------------------------------------------------------------------


def digest(parts: Any) -> str:
    """A short fingerprint of a request's filters, carried in its cursors."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_cursor(key: list[Any], fingerprint: str) -> str:
    """An opaque cursor: the last key returned and the fingerprint of the filters."""
    text = json.dumps([*key, fingerprint], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _fits(value: object, kind: type) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return kind is int and 0 <= value <= MAX_INT
    return type(value) is kind


def decode_cursor(value: str, fingerprint: str, shape: tuple[type, ...]) -> list[Any]:
    """The key a cursor holds; 400 if it is not one of ours or was made for other filters."""
    expected = "expected `cursor` as given in `next_cursor` by the previous page"
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise ProtocolError(f"{expected}, got {_shown(value)}") from None
    if (
        not isinstance(key, list)
        or len(key) != len(shape) + 1
        or not all(_fits(k, t) for k, t in zip(key, shape, strict=False))
    ):
        raise ProtocolError(f"{expected}, got {_shown(value)}")
    if key[-1] != fingerprint:
        raise ProtocolError(f"{expected} for the same filters; these filters differ from its own")
    return list(key[:-1])
