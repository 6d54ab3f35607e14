"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database URL in the test's own folder."""
    return f"sqlite:///{tmp_path / 'playproof.db'}"


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database for a module's server."""
    return f"sqlite:///{tmp_path_factory.mktemp('srv') / 'playproof.db'}"


@pytest.fixture(scope="module")
def server(shared_db: str) -> Iterator[ServerProcess]:
    """A real `playproof serve` process on SQLite, shared by a module's tests."""
    with ServerProcess(shared_db) as proc:
        yield proc
