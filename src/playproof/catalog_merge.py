"""Catalog imports: canonical JSON, and what an import changes.

`merge` applies an import, adding and updating what it names and, with `replace`,
retiring what it omits, and reports every change (`Change`) so that past decisions stay
explainable. Pure: no I/O; the stores keep the catalog and its history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from playproof.catalog import (
    KINDS,
    Campaign,
    Catalog,
    Change,
    Entry,
    canonical,
    canonical_campaign,
    index,
)

_encoder = msgspec.json.Encoder(order="sorted")


def to_json(catalog: Catalog) -> bytes:
    """Canonical JSON (lists sorted by id, keys sorted): identical catalogs, identical bytes."""
    return _encoder.encode(canonical(catalog))


def entry_json(entry: Entry) -> str:
    """One entry as canonical JSON text, as a Change carries it."""
    if isinstance(entry, Campaign):
        entry = canonical_campaign(entry)
    return _encoder.encode(entry).decode()


def merge(current: Catalog, incoming: Catalog, replace: bool) -> tuple[Catalog, list[Change]]:
    """Apply an import: add or update what `incoming` names; `replace` retires what it omits."""
    now, new = index(canonical(current)), index(canonical(incoming))
    lists: dict[str, list[Any]] = {}
    changes: list[Change] = []
    for kind, field, _ in KINDS:
        before: dict[str, Any] = getattr(now, field)
        after: dict[str, Any] = getattr(new, field)
        result = dict(after) if replace else {**before, **after}
        changes.extend(_changes(kind, before, result))
        lists[field] = list(result.values())
    return canonical(Catalog(**lists)), changes


def _changes(kind: str, before: dict[str, Any], after: dict[str, Any]) -> Iterator[Change]:
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        action = "added" if old is None else "retired" if new is None else "updated"
        before_json, after_json = (None if e is None else entry_json(e) for e in (old, new))
        yield Change(kind, key, action, before_json, after_json)
