"""Stores behind one interface: SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

from pathlib import Path

from playproof.errors import ConfigError
from playproof.stores.base import Store

DEFAULT_URL = "sqlite:///./playproof.db"


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///path` URL names (four slashes for an absolute path)."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"expected a sqlite:///PATH URL, got {url!r}")
    rest = url.removeprefix("sqlite:///")
    if not rest:
        raise ConfigError(f"expected a file path after sqlite:///, got {url!r}")
    return Path(rest)


def open_store(url: str, blob_dir: Path | None = None) -> Store:
    """The store a URL names: `sqlite:///PATH` or `postgresql://...` (not yet opened)."""
    if url.startswith("sqlite:"):
        from playproof.stores.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), blob_dir)
    if url.startswith(("postgresql://", "postgres://")):
        from playproof.stores.postgres import PostgresStore

        return PostgresStore(url, blob_dir)
    raise ConfigError(f"expected a sqlite:///PATH or postgresql://... database URL, got {url!r}")


def redact_url(url: str) -> str:
    """A database URL fit to print: without a password."""
    if url.startswith(("postgresql://", "postgres://")):
        from playproof.stores.postgres import redact

        return redact(url)
    return url
