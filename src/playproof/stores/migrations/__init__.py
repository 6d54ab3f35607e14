"""Versioned schema migrations: numbered SQL scripts per dialect, applied in order."""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

from playproof.errors import SchemaMismatch


class Migration(NamedTuple):
    """One numbered SQL script."""

    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """Every migration of a dialect (`sqlite`, `postgres`), oldest first."""
    folder = resources.files(__package__).joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found)


def latest(dialect: str) -> int:
    """The schema version this code expects."""
    return max(m.version for m in migrations(dialect))


def pending(dialect: str, current: int) -> list[Migration]:
    """The migrations a database at `current` still needs; refuse a schema from the future."""
    target = latest(dialect)
    if current > target:
        raise SchemaMismatch(
            f"database schema is at version {current}, newer than this playproof "
            f"(expects at most {target}); upgrade playproof instead of using an older one"
        )
    return [m for m in migrations(dialect) if m.version > current]
