"""`playproof agent` in a real process, called over HTTP as a player would, on a real service."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.device.realplayers import AgentProcess, ids, wait_stored
from tests.support import ServerProcess, png, provision

KIOSK = "http://kiosk.test:8080"


@pytest.fixture(scope="module")
def agent(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """One agent for the module's calls, answering one allowed origin."""
    token = provision(server.db_url, "scr-agent", "store-1")
    data = tmp_path_factory.mktemp("agent") / "device"
    with AgentProcess(
        server.url, token, "scr-agent", data, "--allow-origin", KIOSK, "--screenshots", "player"
    ) as proc:
        yield proc


def _start(client: httpx.Client, content_id: str = "cnt-1", expected_ms: int = 60_000) -> str:
    answer = client.post("/plays", json=ids(content_id, expected_ms))
    assert answer.status_code == 201, answer.text
    play: str = answer.json()["play"]
    return play


def test_two_calls_record_a_play_that_reaches_the_service_once(
    agent: AgentProcess, server: ServerProcess
) -> None:
    with agent.client() as client:
        play = _start(client, "cnt-two-calls")
        answer = client.post(f"/plays/{play}/end", json={"end_reason": "completed"})
    assert answer.status_code == 200, answer.text
    seq = answer.json()["seq"]
    rows = [r for r in wait_stored(server.db_url, "scr-agent", 1) if r["seq"] == seq]
    assert [(r["content_id"], r["end_reason"]) for r in rows] == [("cnt-two-calls", "completed")]


def test_an_unknown_play_is_404_and_ending_twice_is_409(agent: AgentProcess) -> None:
    with agent.client() as client:
        unknown = client.post("/plays/nosuchplay/end", json={"end_reason": "completed"})
        play = _start(client)
        first = client.post(f"/plays/{play}/end", json={"end_reason": "skipped"})
        second = client.post(f"/plays/{play}/end", json={"end_reason": "completed"})
    assert unknown.status_code == 404
    assert "expected the id of a play started on this agent" in unknown.json()["error"]
    assert first.status_code == 200
    assert second.status_code == 409
    assert "already ended" in second.json()["error"]


def test_ids_the_protocol_refuses_are_400_naming_the_field(agent: AgentProcess) -> None:
    with agent.client() as client:
        bad_id = client.post("/plays", json={**ids("cnt-1", 1000), "content_id": "bad id!"})
        missing = client.post("/plays", json={"campaign_id": "cmp-1"})
        reason = client.post(f"/plays/{_start(client)}/end", json={"end_reason": "device_restart"})
    assert bad_id.status_code == 400
    assert "content_id" in bad_id.json()["error"]
    assert missing.status_code == 400
    assert "ad_group_id" in missing.json()["error"]
    assert reason.status_code == 400
    assert "end_reason" in reason.json()["error"]


def test_a_call_without_json_content_type_is_415(agent: AgentProcess) -> None:
    with agent.client() as client:
        answer = client.post("/plays", content=b'{"campaign_id": "cmp-1"}')
        form = client.post("/plays", data={"campaign_id": "cmp-1"})
    assert answer.status_code == 415
    assert "expected Content-Type application/json" in answer.json()["error"]
    assert form.status_code == 415


def test_a_foreign_origin_is_refused_and_gets_no_cors_answer(agent: AgentProcess) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    with agent.client() as client:
        foreign = client.post("/plays", json=ids("cnt-1", 1000), headers={"Origin": "http://ad.x"})
        asked = client.options("/plays", headers={"Origin": "http://ad.x", **preflight})
        allowed = client.options("/plays", headers={"Origin": KIOSK, **preflight})
        sandboxed = client.post("/session", json={}, headers={"Origin": "null"})
    assert foreign.status_code == 403
    assert "--allow-origin" in foreign.json()["error"]
    assert asked.status_code == 403
    assert "access-control-allow-origin" not in asked.headers
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == KIOSK
    assert "Authorization" in allowed.headers["access-control-allow-headers"]
    assert sandboxed.status_code == 403


def test_a_kiosk_page_on_an_allowed_origin_gets_the_token_and_no_one_else(
    agent: AgentProcess,
) -> None:
    with httpx.Client(base_url=agent.url) as bare:
        kiosk = bare.post("/session", json={}, headers={"Origin": KIOSK})
        no_origin = bare.post("/session", json={})
        script = bare.get("/playproof.js")
    assert kiosk.status_code == 200
    assert kiosk.json()["token"] == agent.token
    assert kiosk.headers["access-control-allow-origin"] == KIOSK
    assert no_origin.status_code == 403
    assert script.status_code == 200
    assert agent.token not in script.text


def test_a_host_that_is_not_the_agents_is_refused(agent: AgentProcess) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends its own name.
    port = agent.url.rsplit(":", 1)[1]
    with agent.client() as client:
        rebound = client.get("/status", headers={"Host": f"evil.example:{port}"})
        named = client.get("/status", headers={"Host": f"localhost:{port}"})
    assert rebound.status_code == 400
    assert "expected Host" in rebound.json()["error"]
    assert named.status_code == 200


def test_a_missing_or_wrong_token_is_401_and_the_token_file_is_the_owners_only(
    agent: AgentProcess,
) -> None:
    with httpx.Client(base_url=agent.url) as bare:
        missing = bare.post("/plays", json=ids("cnt-1", 1000))
        wrong = bare.post(
            "/plays", json=ids("cnt-1", 1000), headers={"Authorization": "Bearer not-it"}
        )
    assert missing.status_code == 401
    assert "agent.token" in missing.json()["error"]
    assert wrong.status_code == 401
    mode = stat.S_IMODE(os.stat(agent.data_dir / "agent.token").st_mode)
    assert mode == 0o600


def test_status_tells_journal_depth_clock_connection_and_last_error(agent: AgentProcess) -> None:
    with agent.client() as client:
        answer = client.get("/status")
    assert answer.status_code == 200
    body = answer.json()
    assert {"queue_depth", "clock", "connection", "last_error", "open_plays"} <= set(body)
    assert body["clock"]["source"] in ("ntp", "service", "none")


def test_a_loop_records_one_play_per_pass_under_one_id(
    agent: AgentProcess, server: ServerProcess
) -> None:
    with agent.client() as client:
        play = _start(client, "cnt-loop")
        first = client.post(f"/plays/{play}/pass", json={})
        second = client.post(f"/plays/{play}/pass", json={})
        last = client.post(f"/plays/{play}/end", json={"end_reason": "interrupted"})
    seqs = [first.json()["seq"], second.json()["seq"], last.json()["seq"]]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    rows = {r["seq"]: r for r in wait_stored(server.db_url, "scr-agent", 0)}

    def arrived() -> bool:
        rows.update({r["seq"]: r for r in wait_stored(server.db_url, "scr-agent", 0)})
        return all(s in rows for s in seqs)

    wait_until(arrived)
    assert [rows[s]["end_reason"] for s in seqs] == ["completed", "completed", "interrupted"]


def test_a_picture_handed_in_as_png_or_jpeg_becomes_the_plays_screenshot(
    agent: AgentProcess, server: ServerProcess
) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 40)).save(jpeg, format="JPEG")
    with agent.client() as client:
        play = _start(client, "cnt-shot")
        as_png = client.post(
            f"/plays/{play}/screenshot", content=png(), headers={"Content-Type": "image/png"}
        )
        as_jpeg = client.post(
            f"/plays/{play}/screenshot",
            content=jpeg.getvalue(),
            headers={"Content-Type": "image/jpeg"},
        )
        garbage = client.post(
            f"/plays/{play}/screenshot", content=b"nope", headers={"Content-Type": "image/png"}
        )
        gif = client.post(
            f"/plays/{play}/screenshot", content=b"GIF89a", headers={"Content-Type": "image/gif"}
        )
        seq = client.post(f"/plays/{play}/end", json={"end_reason": "completed"}).json()["seq"]
    assert as_png.status_code == 201
    assert as_jpeg.status_code == 201
    assert garbage.status_code == 400
    assert gif.status_code == 415
    sha = as_jpeg.json()["sha256"]

    def arrived() -> bool:
        return any(
            r["seq"] == seq and r["screenshot_sha256"] == sha
            for r in wait_stored(server.db_url, "scr-agent", 0)
        )

    wait_until(arrived)


def test_the_openapi_document_names_every_route(agent: AgentProcess) -> None:
    with httpx.Client(base_url=agent.url) as bare:
        document = bare.get("/openapi.json").json()
    assert set(document["paths"]) == {
        "/plays",
        "/plays/{play}/end",
        "/plays/{play}/pass",
        "/plays/{play}/screenshot",
        "/status",
        "/session",
        "/playproof.js",
        "/openapi.json",
    }


def test_a_listen_address_beyond_loopback_is_refused_without_the_explicit_flag(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "playproof",
            "agent",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "--device-id",
            "scr-x",
            "--store-id",
            "store-1",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--allow-remote" in result.stderr


def test_a_play_the_player_never_ends_is_closed_interrupted(
    server: ServerProcess, tmp_path: Path
) -> None:
    token = provision(server.db_url, "scr-agent-lost", "store-1")
    with AgentProcess(server.url, token, "scr-agent-lost", tmp_path / "d", "--grace", "0.5") as ag:
        with ag.client() as client:
            _start(client, "cnt-forgotten", expected_ms=300)
        rows = wait_stored(server.db_url, "scr-agent-lost", 1)
    assert [(r["content_id"], r["end_reason"]) for r in rows] == [("cnt-forgotten", "interrupted")]


def test_the_agent_killed_between_the_calls_leaves_device_restart_and_every_play_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    token = provision(server.db_url, "scr-agent-kill", "store-1")
    data = tmp_path / "d"
    first = AgentProcess(server.url, token, "scr-agent-kill", data)
    first.start()
    with first.client() as client:
        done = _start(client, "cnt-before")
        assert client.post(f"/plays/{done}/end", json={"end_reason": "completed"}).is_success
        # Answered: so the start is durable in the journal, whatever happens next.
        cut = _start(client, "cnt-cut")
    first.kill()
    with AgentProcess(server.url, token, "scr-agent-kill", data) as second, second.client() as c:
        gone = c.post(f"/plays/{cut}/end", json={"end_reason": "completed"})
        after = _start(c, "cnt-after")
        assert c.post(f"/plays/{after}/end", json={"end_reason": "completed"}).is_success
        rows = wait_stored(server.db_url, "scr-agent-kill", 3)
    assert gone.status_code == 404
    assert [(r["seq"], r["content_id"], r["end_reason"]) for r in rows] == [
        (1, "cnt-before", "completed"),
        (2, "cnt-cut", "device_restart"),
        (3, "cnt-after", "completed"),
    ]


def wait_until(check: object, timeout: float = 30.0) -> None:
    """Poll `check()` until it holds; AssertionError after `timeout` (a deadline)."""
    import time

    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_sigterm_ends_open_plays_interrupted_delivers_them_and_exits_0(
    server: ServerProcess, tmp_path: Path
) -> None:
    token = provision(server.db_url, "scr-agent-term", "store-1")
    proc = AgentProcess(server.url, token, "scr-agent-term", tmp_path / "d")
    proc.start()
    try:
        with proc.client() as client:
            _start(client, "cnt-open")
        assert proc.stop() == 0
    finally:
        proc.kill()
    rows = wait_stored(server.db_url, "scr-agent-term", 1)
    assert [(r["content_id"], r["end_reason"]) for r in rows] == [("cnt-open", "interrupted")]
