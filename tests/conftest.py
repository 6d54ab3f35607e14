"""Fixtures shared by the whole suite."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.reliability import Tally
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


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """A scenario's tally, appended to PLAYPROOF_RELIABILITY_OUT (when set) as it ends."""
    result = Tally(scenario=request.node.nodeid)
    yield result
    out = os.environ.get("PLAYPROOF_RELIABILITY_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(asdict(result)) + "\n")
