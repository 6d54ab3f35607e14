"""Fuzz campaign (not CI): generated HTTP requests and hostile stream frames against a real service.

    .venv/bin/python bench/fuzz.py                          # 100,000 requests + 100,000 frames
    .venv/bin/python bench/fuzz.py --requests 2000 --frames 2000 --pool 20   # a smoke run

Starts `playproof serve` (SQLite, a temp dir) with the per-device rate and the
auth-failure limits lifted for the fuzzing tokens (as tests/faults/test_schemathesis.py
does), then, all at once:

- HTTP: schemathesis cases generated from `/openapi.json` (`--pool` per operation),
  each sent with a device token, an operator token, no token or a bogus one, and as
  mutants (a query, path or header value replaced by a hostile one); hypothesis
  envelopes (tests/faults/test_hostile.py); random bytes, truncated and bogus gzip,
  deep nesting, huge numbers, random methods and paths.
- Stream: hypothesis envelopes and records, wrong types, huge ints, unicode, binary
  frames, oversized and truncated JSON, wrong ids, over `--connections` WebSockets;
  a connection the service closes is counted by its close code and opened again.
- A well-behaved device on 127.0.0.2 posts one valid sealed record every 50 ms and
  `/healthz` is polled every 0.5 s.

At the end: every record acknowledged `accepted` to the good device is stored exactly
once; printed are the requests by status, the frames by answer, 5xx, non-JSON error
answers, dropped connections, health failures and the service's peak RSS. Exit 1 on a
5xx, a hang, a lost or doubled good record, a health failure or a dead service.
Figures go to RELIABILITY.md ("Fuzz campaign") with the command and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import schemathesis  # noqa: E402
import tests.support as support  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests.faults.test_auth_flood import from_address  # noqa: E402
from tests.faults.test_backpressure import MIB, rss  # noqa: E402
from tests.faults.test_hostile import envelopes, mutated_records  # noqa: E402
from tests.server.reporting import operator_token  # noqa: E402
from tests.support import ServerProcess, envelope, make_record, now_ms, provision  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from playproof.protocol import encode  # noqa: E402
from playproof.server import openapi  # noqa: E402
from playproof.server.stream import MAX_FRAME_BYTES  # noqa: E402

SERVER_LOG: deque[str] = deque(maxlen=400)


def keep_log(proc: subprocess.Popen[bytes]) -> None:
    """Keep the service's last log lines (tests.support drops them): a crash shows why."""

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            SERVER_LOG.append(line.decode(errors="replace").rstrip())

    threading.Thread(target=pump, daemon=True).start()


support._drain = keep_log

GOOD = "scr-fuzz-good"
FUZZ = [f"scr-fuzz-{i}" for i in range(4)]
LIMITS = [
    "device_rate=10000000",
    "device_burst=10000000",
    f"device_bytes_rate={1 << 40}",
    f"device_bytes_burst={1 << 40}",
    "auth_failures=10000000",
    "auth_failure_rate=10000000",
    "stream_connections_per_device=64",
]
ANSWER_TIMEOUT_S = 30.0  # past this an answer counts as a hang
HOSTILE_STRINGS = [
    "",
    " ",
    "\x00",
    "../../etc/passwd",
    "%00",
    "%ff%fe",
    "ʇǝʃʃɐʍ-ɹǝpɐǝɥ",
    "\ud7ff\ue000",
    "😀" * 50,
    "a" * 5000,
    "-1",
    "0",
    "9" * 400,
    "1e309",
    "NaN",
    "-Infinity",
    "true",
    "null",
    "[]",
    "{}",
    "' OR 1=1 --",
    "<script>",
    "2026-13-45T25:61:61Z",
    "1970-01-01",
    "9999-12-31T23:59:59Z",
]
HUGE = [2**53, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400, -(10**400), 1e308, -0.0, 1.5]


@dataclass
class Tally:
    """Everything counted during the campaign."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)
    frame_answers: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    server_5xx: list[str] = field(default_factory=list)
    non_json: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    health_ok: int = 0
    health_failed: list[str] = field(default_factory=list)
    health_max_s: float = 0.0
    good_sent: int = 0
    good_failed: Counter[str] = field(default_factory=Counter)
    good_acked: set[int] = field(default_factory=set)
    good_latency: list[float] = field(default_factory=list)
    rss_peak: int = 0


# --- generation --------------------------------------------------------------------


def collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of a strategy, drawn the way a test would (shrinking off)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=["generate"],
    )
    @given(strategy)
    def take(value: Any) -> None:
        found.append(value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        take()
    return found


def schema_cases(base_url: str, per_operation: int) -> list[dict[str, Any]]:
    """Requests generated by schemathesis from our OpenAPI document, as httpx arguments."""
    schema = schemathesis.openapi.from_dict(json.loads(openapi.document()))
    requests = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for case in collect(operation.as_strategy(), per_operation):
            kwargs = case.as_transport_kwargs(base_url=base_url)
            requests.append(to_httpx(kwargs))
    return requests


def to_httpx(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis's requests-style arguments as httpx's."""
    headers = {
        k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"
    }
    out: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": headers,
        "params": kwargs.get("params") or {},
    }
    if "json" in kwargs:
        out["content"] = json.dumps(kwargs["json"]).encode()
        out["headers"].setdefault("Content-Type", "application/json")
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        out["content"] = data if isinstance(data, bytes) else str(data).encode()
    return out


def hostile_value(rng: random.Random) -> Any:
    """A value a careless client or an attacker might put anywhere."""
    if rng.random() < 0.7:
        return rng.choice(HOSTILE_STRINGS)
    return str(rng.choice(HUGE))


def mutant(rng: random.Random, request: dict[str, Any]) -> dict[str, Any]:
    """A schemathesis request with one query, path or header value made hostile."""
    params = dict(httpx.QueryParams(request["params"]))
    out = {**request, "headers": dict(request["headers"]), "params": params}
    where = rng.choice(["param", "path", "header", "method"])
    if where == "param" or (where == "path" and "/" not in out["url"][8:]):
        key = rng.choice([*out["params"], "from", "to", "limit", "format", "x"])
        out["params"][key] = hostile_value(rng)
    elif where == "path":
        head, _, _tail = out["url"].rpartition("/")
        out["url"] = head + "/" + quote(str(hostile_value(rng)), safe="")
    elif where == "header":
        name = rng.choice(["Content-Encoding", "Content-Type", "X-Forwarded-For", "Accept"])
        out["headers"][name] = rng.choice(["gzip", "br", "text/plain", "1.2.3.4, ::1", "\x7f"])
    else:
        out["method"] = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    return out


def deep(rng: random.Random) -> bytes:
    """An envelope whose one record is nested hundreds to hundreds of thousands deep."""
    depth = rng.choice([100, 1000, 10_000, 200_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return b'{"device_id":"x","sent_at":1,"impressions":[%s1%s]}' % (
        opener * depth,
        closer * depth,
    )


def huge_numbers(rng: random.Random, device_id: str) -> bytes:
    """A record of ours with numeric fields past every integer and float range."""
    record = json.loads(encode(make_record(device_id=device_id, seq=rng.randint(1, 10**6))))
    for name in rng.sample(["seq", "start_ts", "end_ts", "duration_ms", "expected_ms"], 2):
        record[name] = rng.choice(HUGE)
    body = {
        "device_id": device_id,
        "sent_at": rng.choice([now_ms(), *HUGE]),
        "impressions": [record],
    }
    return json.dumps(body).encode()


# --- HTTP --------------------------------------------------------------------------


class HttpFuzzer:
    """Builds the next hostile request, sends it, counts the answer."""

    POSTS = ("/v1/impressions/batch", "/v1/devices/status")

    def __init__(
        self, url: str, cases: list[dict[str, Any]], envs: list[Any], tokens: dict[str, str]
    ):
        self.url = url
        self.cases = cases
        self.envs = [json.dumps(e).encode() for e in envs]
        self.tokens = tokens
        self.kinds: list[tuple[str, float, Callable[[random.Random], dict[str, Any]]]] = [
            ("schema", 0.35, self.schema),
            ("schema-mutant", 0.2, self.schema_mutant),
            ("hypothesis-envelope", 0.15, self.hypothesis_envelope),
            ("random-bytes", 0.1, self.random_bytes),
            ("bad-gzip", 0.07, self.bad_gzip),
            ("deep-nesting", 0.03, self.deep_nesting),
            ("huge-numbers", 0.05, self.huge),
            ("random-route", 0.05, self.random_route),
        ]

    def pick(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        """A kind of request and the request."""
        kind = rng.choices(self.kinds, weights=[w for _, w, _ in self.kinds])[0]
        request = kind[2](rng)
        who = rng.choice(["device", "device", "operator", "operator", "none", "bogus"])
        if who != "none":
            token = self.tokens[who] if who in self.tokens else "pp_" + rng.randbytes(16).hex()
            request["headers"] = {**request.get("headers", {}), "Authorization": f"Bearer {token}"}
        return kind[0], request

    def schema(self, rng: random.Random) -> dict[str, Any]:
        return dict(rng.choice(self.cases))

    def schema_mutant(self, rng: random.Random) -> dict[str, Any]:
        return mutant(rng, rng.choice(self.cases))

    def _post(self, rng: random.Random, body: bytes, **headers: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": self.url + rng.choice(self.POSTS),
            "headers": {"Content-Type": "application/json", **headers},
            "content": body,
        }

    def hypothesis_envelope(self, rng: random.Random) -> dict[str, Any]:
        return self._post(rng, rng.choice(self.envs))

    def random_bytes(self, rng: random.Random) -> dict[str, Any]:
        body = rng.randbytes(rng.choice([0, 1, 16, 256, 4096, 65536]))
        return self._post(rng, body)

    def bad_gzip(self, rng: random.Random) -> dict[str, Any]:
        packed = gzip.compress(rng.choice(self.envs))
        body = rng.choice(
            [
                packed[: rng.randint(0, max(0, len(packed) - 1))],
                b"\x1f\x8b" + rng.randbytes(64),
                rng.choice(self.envs),  # says gzip, is not
                packed + rng.randbytes(8),
            ]
        )
        return self._post(rng, body, **{"Content-Encoding": "gzip"})

    def deep_nesting(self, rng: random.Random) -> dict[str, Any]:
        return self._post(rng, deep(rng))

    def huge(self, rng: random.Random) -> dict[str, Any]:
        return self._post(rng, huge_numbers(rng, rng.choice(FUZZ)))

    def random_route(self, rng: random.Random) -> dict[str, Any]:
        segments = [rng.choice(["v1", "impressions", "devices", "reports", "x", "..", "%2e%2e"])]
        segments += [str(hostile_value(rng)) for _ in range(rng.randint(0, 3))]
        path = "/" + "/".join(quote(s, safe="%.") for s in segments)
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"])
        return {
            "method": method,
            "url": self.url + path,
            "content": rng.randbytes(rng.randint(0, 64)),
        }


async def http_worker(fuzzer: HttpFuzzer, quota: list[int], seed: int, tally: Tally) -> None:
    """Send requests until the shared quota runs out."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=ANSWER_TIMEOUT_S) as http:
        while quota[0] > 0:
            quota[0] -= 1
            kind, request = fuzzer.pick(rng)
            tally.requests[kind] += 1
            await send(http, kind, request, tally)


async def send(http: httpx.AsyncClient, kind: str, request: dict[str, Any], tally: Tally) -> None:
    """One request; its status counted, anything wrong with its answer noted."""
    label = f"{kind} {request['method']} {str(request['url'])[:120]}"
    try:
        answer = await http.request(**request)
    except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError) as exc:
        tally.requests["not sendable (client refused)"] += 1
        tally.unsent.append(f"{label}: {exc}")
        return
    except httpx.TimeoutException:
        tally.hangs.append(label)
        return
    except httpx.HTTPError as exc:
        tally.dropped.append(f"{label}: {type(exc).__name__} {exc}")
        return
    tally.statuses[answer.status_code] += 1
    if answer.status_code >= 500:
        tally.server_5xx.append(f"{label} -> {answer.status_code} {answer.text[:200]}")
    if answer.status_code >= 400 and request["method"] != "HEAD":
        try:
            json.loads(answer.content)
        except ValueError:
            tally.non_json.append(f"{label} -> {answer.status_code} {answer.text[:80]!r}")


# --- stream ------------------------------------------------------------------------


class FrameFuzzer:
    """The next hostile stream frame."""

    def __init__(self, envs: list[Any], records: list[dict[str, Any]]) -> None:
        self.envs = [json.dumps(e) for e in envs]
        self.env_dicts = [e for e in envs if isinstance(e, dict)]
        self.records = records
        self.kinds: list[tuple[str, float, Callable[[random.Random, str], str | bytes]]] = [
            ("hypothesis-envelope", 0.3, self.hypothesis_envelope),
            ("mutated-record", 0.2, self.mutated),
            ("wrong-id", 0.1, self.wrong_id),
            ("huge-ints", 0.08, self.huge),
            ("unicode", 0.07, self.unicode),
            ("binary", 0.07, self.binary),
            ("truncated-json", 0.1, self.truncated),
            ("valid", 0.0799, self.valid),
            ("oversized", 0.0001, self.oversized),
        ]

    def pick(self, rng: random.Random, device_id: str) -> tuple[str, str | bytes]:
        """A kind of frame and the frame."""
        kind = rng.choices(self.kinds, weights=[w for _, w, _ in self.kinds])[0]
        return kind[0], kind[2](rng, device_id)

    def _frame(self, rng: random.Random, device_id: str, impressions: list[Any]) -> dict[str, Any]:
        return {
            "id": rng.randint(1, 2**40),
            "device_id": device_id,
            "sent_at": now_ms(),
            "impressions": impressions,
        }

    def hypothesis_envelope(self, rng: random.Random, device_id: str) -> str:
        if rng.random() < 0.5 and self.env_dicts:
            return json.dumps({**rng.choice(self.env_dicts), "id": rng.randint(-5, 10**6)})
        return rng.choice(self.envs)

    def mutated(self, rng: random.Random, device_id: str) -> str:
        picked = rng.sample(self.records, rng.randint(1, 5))
        return json.dumps(self._frame(rng, device_id, picked))

    def wrong_id(self, rng: random.Random, device_id: str) -> str:
        frame = self._frame(rng, device_id, [rng.choice(self.records)])
        frame["id"] = rng.choice([None, "1", -1, 2**64, 2**80, 1.5, [], {}, True, "ʇ"])
        if rng.random() < 0.3:
            frame["device_id"] = rng.choice([*FUZZ, GOOD, "", "x" * 500, 7])
        if rng.random() < 0.2:
            del frame["id"]
        return json.dumps(frame)

    def huge(self, rng: random.Random, device_id: str) -> str:
        frame = self._frame(rng, device_id, [dict(rng.choice(self.records))])
        record = frame["impressions"][0]
        for name in rng.sample(["seq", "start_ts", "end_ts", "duration_ms", "expected_ms"], 2):
            record[name] = rng.choice(HUGE)
        frame[rng.choice(["id", "sent_at"])] = rng.choice(HUGE)
        return json.dumps(frame)

    def unicode(self, rng: random.Random, device_id: str) -> str:
        frame = self._frame(rng, device_id, [dict(rng.choice(self.records))])
        record = frame["impressions"][0]
        text = "".join(
            chr(rng.choice([0x0, 0x7F, 0x202E, 0xFEFF, 0x1F600, 0x10FFFF, 0xD7FF]))
            for _ in range(rng.randint(1, 40))
        )
        record[rng.choice(["campaign_id", "content_id", "journal_id", "device_id"])] = text
        return json.dumps(frame, ensure_ascii=rng.random() < 0.5)

    def binary(self, rng: random.Random, device_id: str) -> bytes:
        if rng.random() < 0.5:
            return json.dumps(self._frame(rng, device_id, [rng.choice(self.records)])).encode()
        return rng.randbytes(rng.choice([0, 1, 64, 4096]))

    def truncated(self, rng: random.Random, device_id: str) -> str:
        text = json.dumps(self._frame(rng, device_id, rng.sample(self.records, 2)))
        return rng.choice(
            [text[: rng.randint(0, len(text) - 1)], "[" * rng.randint(1, 100_000), "{", "", "null"]
        )

    def valid(self, rng: random.Random, device_id: str) -> str:
        record = json.loads(encode(make_record(device_id=device_id, seq=rng.randint(1, 10**9))))
        return json.dumps(self._frame(rng, device_id, [record]))

    def oversized(self, rng: random.Random, device_id: str) -> str:
        frame = json.dumps(self._frame(rng, device_id, [rng.choice(self.records)]))
        return frame[:-1] + " " * (MAX_FRAME_BYTES + 1 - len(frame)) + "}"


async def stream_worker(
    url: str,
    token: str,
    device_id: str,
    fuzzer: FrameFuzzer,
    quota: list[int],
    seed: int,
    tally: Tally,
) -> None:
    """Send frames one at a time, each answered before the next; reconnect when closed."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    while quota[0] > 0:
        try:
            async with connect(url, additional_headers=headers, max_size=None) as ws:
                while quota[0] > 0:
                    quota[0] -= 1
                    kind, frame = fuzzer.pick(rng, device_id)
                    tally.frames[kind] += 1
                    await ws.send(frame)
                    await frame_answer(ws, kind, tally)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else "none (no close frame)"
            tally.closes[f"{code} {exc.rcvd.reason[:60] if exc.rcvd else ''}".strip()] += 1
            if exc.rcvd is None:
                tally.dropped.append(f"stream {device_id}: {exc}")
        except Hang:
            continue  # counted; a fresh connection
        except OSError as exc:
            tally.dropped.append(f"stream {device_id}: connect {exc}")
            await asyncio.sleep(0.5)


class Hang(Exception):
    """A frame got no answer in time."""


async def frame_answer(ws: Any, kind: str, tally: Tally) -> None:
    """Read one answer and count it: ack, error (retryable or not), or non-JSON."""
    try:
        reply = await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S)
    except TimeoutError:
        tally.hangs.append(f"stream frame {kind}: no answer in {ANSWER_TIMEOUT_S} s")
        raise Hang from None
    try:
        answer = json.loads(reply)
    except ValueError:
        tally.non_json.append(f"stream frame {kind}: {str(reply)[:80]!r}")
        return
    if isinstance(answer, dict) and "acks" in answer:
        tally.frame_answers["ack"] += 1
    elif isinstance(answer, dict) and "error" in answer:
        retry = "retry_after_ms" in answer and answer["retry_after_ms"] is not None
        tally.frame_answers["error (retryable)" if retry else "error"] += 1
    else:
        tally.non_json.append(f"stream frame {kind}: unexpected {str(answer)[:80]}")


# --- the well-behaved device, health and memory ------------------------------------


async def good_device(url: str, token: str, stop: asyncio.Event, tally: Tally) -> None:
    """One valid record every 50 ms from 127.0.0.2; a refused one is sent again."""
    seq = 1
    async with from_address(url, "127.0.0.2", token) as http:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            body = envelope([make_record(device_id=GOOD, seq=seq)], GOOD)
            tally.good_sent += 1
            started = time.perf_counter()
            try:
                answer = await http.post("/v1/impressions/batch", json=body)
            except httpx.HTTPError as exc:
                tally.good_failed[type(exc).__name__] += 1
                continue
            tally.good_latency.append(time.perf_counter() - started)
            if answer.status_code != 200:
                tally.good_failed[str(answer.status_code)] += 1
                continue
            ack = answer.json()["acks"][0]
            if ack["result"] in ("accepted", "duplicate"):
                tally.good_acked.add(seq)
                seq += 1
            else:
                tally.good_failed[f"ack {ack}"] += 1
                seq += 1


async def health(url: str, pid: int, stop: asyncio.Event, tally: Tally) -> None:
    """/healthz every 0.5 s from 127.0.0.3, and the service's memory."""
    async with from_address(url, "127.0.0.3") as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                answer = await http.get("/healthz", timeout=5)
                ok = answer.status_code == 200
                note = f"{answer.status_code} {answer.text[:80]}"
            except httpx.HTTPError as exc:
                ok, note = False, f"{type(exc).__name__} {exc}"
            took = time.perf_counter() - started
            tally.health_max_s = max(tally.health_max_s, took)
            if tally.health_ok % 20 == 0:
                print(
                    f"  … {sum(tally.statuses.values())} answers, "
                    f"{sum(tally.frame_answers.values())} frame answers, "
                    f"closes {sum(tally.closes.values())}, good {len(tally.good_acked)}",
                    flush=True,
                )
            if ok:
                tally.health_ok += 1
            else:
                tally.health_failed.append(f"{time.strftime('%H:%M:%S')} {note}")
            try:
                tally.rss_peak = max(tally.rss_peak, rss(pid)[1])
            except OSError:
                tally.health_failed.append("the service process is gone")
            await asyncio.sleep(0.5)


def stored(db_url: str, device_id: str) -> Counter[int]:
    """How many times each of the device's sequences is stored."""
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30)
    try:
        rows = conn.execute(
            "SELECT seq, count(*) FROM impressions WHERE device_id = ? GROUP BY seq", (device_id,)
        ).fetchall()
    finally:
        conn.close()
    return Counter(dict(rows))


# --- the campaign --------------------------------------------------------------------


def report(tally: Tally, args: argparse.Namespace, seconds: float, copies: Counter[int]) -> int:
    """Print the summary; the number of problems found."""
    lat = sorted(tally.good_latency) or [0.0]
    pick = [lat[int(q * (len(lat) - 1))] * 1000 for q in (0.5, 0.99)] + [lat[-1] * 1000]
    lost = tally.good_acked - set(copies)
    doubled = [s for s, n in copies.items() if n > 1]
    extra = set(copies) - tally.good_acked
    print(f"fuzz: {seconds:.0f} s, seed {args.seed}")
    print(f"http: {sum(tally.requests.values())} requests, by kind {dict(tally.requests)}")
    print(f"http: by status {dict(sorted(tally.statuses.items()))}")
    print(f"stream: {sum(tally.frames.values())} frames, by kind {dict(tally.frames)}")
    print(f"stream: answers {dict(tally.frame_answers)}")
    print(f"stream: connections closed by the service {dict(tally.closes)}")
    print(
        f"5xx: {len(tally.server_5xx)}; non-JSON answers: {len(tally.non_json)}; "
        f"dropped: {len(tally.dropped)}; hangs: {len(tally.hangs)}"
    )
    for name, items in [
        ("5xx", tally.server_5xx),
        ("non-JSON", tally.non_json),
        ("dropped", tally.dropped),
        ("not sendable", tally.unsent),
        ("hang", tally.hangs),
    ]:
        by_answer = Counter(item.split(" -> ", 1)[-1] for item in items)
        for answer, count in by_answer.most_common(8):
            example = next(item for item in items if item.endswith(answer))
            print(f"  {name}: {count}x {answer}  (e.g. {example.split(' -> ', 1)[0]})")
    print(
        f"healthz: {tally.health_ok} ok, {len(tally.health_failed)} failed, "
        f"slowest {tally.health_max_s * 1000:.0f} ms"
    )
    for line in tally.health_failed[:8]:
        print(f"  healthz: {line}")
    print(
        f"good device: {tally.good_sent} sent, {len(tally.good_acked)} acknowledged, "
        f"failures {dict(tally.good_failed)}, latency p50/p99/max "
        f"{pick[0]:.1f} / {pick[1]:.1f} / {pick[2]:.1f} ms"
    )
    print(
        f"good device: stored {len(copies)}; lost {len(lost)}, doubled {len(doubled)}, "
        f"stored but not acknowledged {len(extra)}"
    )
    print(f"service: peak RSS {tally.rss_peak / MIB:.0f} MiB")
    return (
        len(tally.server_5xx)
        + len(tally.hangs)
        + len(lost)
        + len(doubled)
        + len(tally.health_failed)
        + len(tally.good_failed)
    )


async def campaign(args: argparse.Namespace, tmp: str) -> int:
    db = f"sqlite:///{tmp}/fuzz.db"
    good = provision(db, GOOD)
    fuzz_tokens = [provision(db, d) for d in FUZZ]
    tokens = {"device": fuzz_tokens[0], "operator": operator_token(db, "ops-fuzz")}
    limits = [f"--limit={limit}" for limit in LIMITS]
    with ServerProcess(db, *limits) as server:
        assert server.proc is not None
        t0 = time.perf_counter()
        cases = schema_cases(server.url, args.pool)
        envs = collect(envelopes, args.pool * 8)
        records = collect(mutated_records(), args.pool * 8)
        print(
            f"generated {len(cases)} schemathesis cases, {len(envs)} envelopes, "
            f"{len(records)} records in {time.perf_counter() - t0:.0f} s"
        )
        tally = Tally()
        stop = asyncio.Event()
        watchers = [
            asyncio.create_task(good_device(server.url, good, stop, tally)),
            asyncio.create_task(health(server.url, server.proc.pid, stop, tally)),
        ]
        started = time.perf_counter()
        http_fuzz = HttpFuzzer(server.url, cases, envs, tokens)
        frame_fuzz = FrameFuzzer(envs, records)
        ws_url = server.url.replace("http://", "ws://") + "/v1/stream"
        requests, frames = [args.requests], [args.frames]
        workers = [
            http_worker(http_fuzz, requests, args.seed * 1000 + i, tally)
            for i in range(args.http_workers)
        ] + [
            stream_worker(
                ws_url,
                fuzz_tokens[i % len(FUZZ)],
                FUZZ[i % len(FUZZ)],
                frame_fuzz,
                frames,
                args.seed * 1000 + 500 + i,
                tally,
            )
            for i in range(args.connections)
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            traceback.print_exc()
            raise
        await asyncio.sleep(1.0)  # the good device's last batch, one more health check
        stop.set()
        await asyncio.gather(*watchers)
        seconds = time.perf_counter() - started
        alive = server.proc.poll() is None
        copies = stored(db, GOOD)
        problems = report(tally, args, seconds, copies)
        print(f"service: {'still running' if alive else 'DEAD'}")
        if not alive or tally.server_5xx:
            print("service log (last lines):", *list(SERVER_LOG)[-60:], sep="\n  ")
        return problems + (0 if alive else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=150, help="schemathesis cases per operation")
    parser.add_argument("--http-workers", type=int, default=16)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--seed", type=int, default=1, help="the mix and the mutations (hypothesis draws afresh)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import uvloop

            problems = uvloop.run(campaign(args, tmp))
        except ImportError:
            problems = asyncio.run(campaign(args, tmp))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
