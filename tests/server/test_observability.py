"""/metrics and /healthz: who may read them, what a scrape costs the store, what they tell.

/metrics on the main listener is an operator route; `serve --metrics-listen` adds a
listener answering /metrics alone, without a token, for a Prometheus on a private
network. The open-gaps gauge is counted in the store in the background, never per
scrape. /healthz answers anyone, so it says healthy or not and nothing of why.
"""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from playproof.errors import StoreUnavailable
from playproof.server.service import Service
from playproof.stores import open_store
from tests.faults.proxy import FaultProxy
from tests.server.reporting import operator_token
from tests.stores.conftest import PG_URL, admin_execute, require_postgres, with_schema
from tests.support import ServerProcess, client, envelope, make_record, provision

GAPS = re.compile(r"^playproof_open_gaps (\S+)$", re.MULTILINE)


def open_gaps(url: str, token: str | None = None) -> float:
    """The open-gaps gauge, as one scrape of `url`/metrics reads it."""
    with client(url, token) as http:
        answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    found = GAPS.search(answer.text)
    assert found, answer.text
    return float(found.group(1))


def post_seqs(url: str, token: str, device_id: str, seqs: list[int]) -> None:
    records = [make_record(device_id=device_id, seq=s) for s in seqs]
    with client(url, token) as http:
        answer = http.post("/v1/impressions/batch", json=envelope(records, device_id))
    assert answer.status_code == 200, answer.text


def until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll `check()` until it holds; whether it did before `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize(("who", "status"), [("none", 401), ("device", 403), ("operator", 200)])
def test_metrics_on_the_main_listener_need_an_operator_token(
    server: ServerProcess, who: str, status: int
) -> None:
    tokens = {
        "none": None,
        "device": provision(server.db_url, f"scr-metrics-{who}"),
        "operator": operator_token(server.db_url, f"ops-metrics-{who}"),
    }
    with client(server.url, tokens[who]) as http:
        answer = http.get("/metrics")
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.headers["content-type"].startswith("text/plain")
        assert "# TYPE playproof_open_gaps gauge" in answer.text
    else:
        assert answer.json()["error"], "a refusal says why"
        assert "playproof_" not in answer.text, "a refusal shows no metric"


def test_metrics_listen_serves_metrics_alone_without_a_token_and_the_main_port_still_asks_one(
    db_url: str,
) -> None:
    with ServerProcess(db_url, "--metrics-listen", "127.0.0.1:0") as server:
        private = server.metrics_url
        assert private != server.url
        with httpx.Client(base_url=private, timeout=30) as http:
            scraped = http.get("/metrics")
            elsewhere = [http.get(path).status_code for path in ("/healthz", "/v1/devices", "/")]
            batch = http.post("/v1/impressions/batch", json={}).status_code
        with client(server.url) as http:
            main = http.get("/metrics")
    assert scraped.status_code == 200, scraped.text
    assert "# TYPE playproof_open_gaps gauge" in scraped.text
    assert elsewhere == [404, 404, 404], "the private listener serves /metrics and nothing else"
    assert batch in (404, 405)
    assert main.status_code == 401


def test_serve_refuses_a_metrics_listen_that_is_not_host_and_port(db_url: str) -> None:
    serve = [sys.executable, "-m", "playproof", "serve", "--db", db_url, "--port", "0"]
    done = subprocess.run(
        [*serve, "--metrics-listen", "9787"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "expected HOST:PORT" in done.stderr and "Traceback" not in done.stderr


def test_a_scrape_reads_the_open_gaps_gauge_and_the_store_is_counted_in_the_background(
    db_url: str,
) -> None:
    token = provision(db_url, "scr-gaps")
    operator = operator_token(db_url, "ops-gaps")
    with ServerProcess(db_url, "--limit", "metrics_refresh_s=3600") as server:
        post_seqs(server.url, token, "scr-gaps", [1, 5])  # opens the gap 2..4
        scrapes = [open_gaps(server.url, operator) for _ in range(20)]
    # Counted when the service started, not again for any of the 20 scrapes.
    assert scrapes == [0.0] * 20
    with ServerProcess(db_url, "--limit", "metrics_refresh_s=0.2") as server:
        assert open_gaps(server.url, operator) == 1.0
        post_seqs(server.url, token, "scr-gaps", [2, 3, 4])  # fills it
        assert until(lambda: open_gaps(server.url, operator) == 0.0), "recounted in time"


def test_healthz_names_no_internals_when_healthy(server: ServerProcess) -> None:
    with client(server.url) as http:
        assert http.get("/healthz").json() == {"status": "ok", "store": "sqlite"}


@pytest.mark.postgres
def test_healthz_says_unavailable_without_the_store_error_and_recovers(tmp_path: Path) -> None:
    require_postgres()
    schema = f"pp_test_{secrets.token_hex(6)}"
    admin_execute(f"CREATE SCHEMA {schema}")
    upstream = urlsplit(PG_URL)
    user, _, _ = upstream.netloc.rpartition("@")
    env = {"PLAYPROOF_BLOB_DIR": str(tmp_path / "blobs")}
    try:
        with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as proxy:
            netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
            db_url = with_schema(upstream._replace(netloc=netloc).geturl(), schema)
            with ServerProcess(db_url, env=env) as server, client(server.url) as http:
                answers = [http.get("/healthz")]
                assert answers[0].json() == {"status": "ok", "store": "postgresql"}
                proxy.set_mode("drop")  # the database is out of reach

                def unhealthy() -> bool:
                    answers.append(http.get("/healthz"))
                    return answers[-1].status_code == 503

                assert until(unhealthy), answers[-1].text
                proxy.set_mode("pass")
                assert until(lambda: http.get("/healthz").status_code == 200, 60)
    finally:
        admin_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    assert answers[-1].json() == {"status": "unavailable"}, "the store's error stays in the log"


def test_the_reason_of_an_unhealthy_answer_is_logged_and_repeated_probes_do_not_flood_the_log(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(open_store(db_url))
    with caplog.at_level(logging.WARNING, "playproof.server.service"):
        for reason in ("database is locked", "database is locked", "disk I/O error"):
            service.unhealthy(StoreUnavailable(f"SQLite cannot answer a ping now: {reason}"))
    assert [r.getMessage() for r in caplog.records] == [
        "health check failed: SQLite cannot answer a ping now: database is locked "
        "(1 failed checks since the last such warning)"
    ]
