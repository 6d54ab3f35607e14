"""Operators: the CLI mints tokens, the service lets them (and only them) open operator routes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.server.reporting import operator_token
from tests.support import ServerProcess, client, provision

OPERATOR_ROUTES = [
    "/v1/operator",
    "/v1/impressions",
    "/v1/impressions/scr-x/j-1/1/screenshot",
    "/v1/reports/delivery?from=2026-01-01&to=2026-02-01",
    "/v1/reports/rejects",
    "/v1/rejects",
    "/v1/devices",
    "/v1/devices/scr-x",
    "/v1/live",
]


def playproof(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "playproof", *args], capture_output=True, text=True, timeout=60
    )


def test_operators_add_prints_only_a_ppo_token_list_shows_and_revoke_marks(db_url: str) -> None:
    added = playproof("operators", "add", "alice", "--db", db_url)
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppo_") and len(lines[0]) == 4 + 32
    again = playproof("operators", "add", "alice", "--db", db_url)
    assert again.returncode == 1 and "already registered" in again.stderr
    bad = playproof("operators", "add", "no spaces", "--db", db_url)
    assert bad.returncode == 1 and "operator name" in bad.stderr
    listed = playproof("operators", "list", "--db", db_url)
    assert "alice" in listed.stdout
    revoked = playproof("operators", "revoke", "alice", "--db", db_url)
    assert revoked.returncode == 0 and "revoked alice" in revoked.stderr
    missing = playproof("operators", "revoke", "bob", "--db", db_url)
    assert missing.returncode == 1 and "bob" in missing.stderr


@pytest.mark.parametrize("route", OPERATOR_ROUTES)
def test_operator_routes_want_an_operator_token(server: ServerProcess, route: str) -> None:
    device_token = provision(server.db_url, f"scr-op-{abs(hash(route)) % 10_000}")
    with client(server.url) as anonymous:
        missing = anonymous.get(route)
    with client(server.url, "ppo_unknown") as stranger:
        unknown = stranger.get(route)
    with client(server.url, device_token) as device:
        refused = device.get(route)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert unknown.status_code == 401
    assert refused.status_code == 403
    assert "device token" in refused.json()["error"]


def test_an_operator_token_opens_operator_routes_and_no_device_route(
    server: ServerProcess,
) -> None:
    token = operator_token(server.db_url, "carol")
    with client(server.url, token) as http:
        assert http.get("/v1/operator").json() == {"name": "carol"}
        assert http.get("/v1/devices").status_code == 200
        batch = http.post(
            "/v1/impressions/batch", json={"device_id": "x", "sent_at": 1, "impressions": []}
        )
    assert batch.status_code == 401


def test_a_revoked_operator_is_refused_within_the_cache_time(server: ServerProcess) -> None:
    token = operator_token(server.db_url, "dave")
    with client(server.url, token) as http:
        assert http.get("/v1/operator").status_code == 200
        assert playproof("operators", "revoke", "dave", "--db", server.db_url).returncode == 0
        deadline = time.monotonic() + 10
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = http.get("/v1/operator").status_code
            time.sleep(0.2)
        response = http.get("/v1/operator")
    assert response.status_code == 403
    assert "revoked" in response.json()["error"]
