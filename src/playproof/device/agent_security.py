"""Who may call the local agent: the player on this machine, and only it.

Loopback alone is not enough. A web page shown by the kiosk (an HTML5 ad, say)
runs in a browser that can reach 127.0.0.1, and DNS rebinding lets a remote
site's page address the agent under its own host name. So every request passes:

- **Host**: must name the listen address or a localhost name with the agent's
  port. A rebound page sends its own host name here, and cannot change it.
- **Origin** (sent by browsers on every cross-origin call and every POST): must
  be one of `--allow-origin`; CORS preflights are answered only for those, so
  a foreign page's browser never sends the real request. `null` (sandboxed
  frames, `file:`) is refused unless allowed by name.
- **Content-Type**: `application/json` on JSON calls, `image/png`/`image/jpeg`
  on hand-ins. None of these is a CORS "simple" type, so a browser must ask
  first (the preflight above), even for a page that expects no answer.
- **Bearer token** (`DATA_DIR/agent.token`, mode 0600): non-browser players
  read the file; a kiosk page on an allowed origin gets it from `POST /session`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from playproof.errors import ConfigError

TOKEN_FILE: Final = "agent.token"  # noqa: S105 (a file name, not a secret)
LOCAL_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")
# Routes a caller without the token may use: nothing secret, nothing recorded.
# `/session` hands out the token, but only to an allowed Origin (checked here).
PUBLIC: Final = frozenset({("GET", "/playproof.js"), ("GET", "/openapi.json")})
SESSION: Final = ("POST", "/session")
JSON_TYPES: Final = ("application/json",)
IMAGE_TYPES: Final = ("image/png", "image/jpeg")


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_or_create_token(data_dir: Path) -> str:
    """The agent's token from `DATA_DIR/agent.token`, created (mode 0600) if missing.

    Kept across restarts, so that a player (or a kiosk's session) survives the agent
    restarting; delete the file to change it.
    """
    path = data_dir / TOKEN_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.chmod(path, 0o600)  # tighten a file someone loosened
            token = path.read_text().strip()
            if len(token) >= 32:
                return token
        token = secrets.token_urlsafe(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return token
    except OSError as exc:
        raise ConfigError(f"cannot keep the agent token in {path}: {exc.strerror}") from None


def allowed_hosts(listen_host: str, port: int) -> frozenset[str]:
    """The Host header values that name this agent."""
    names = {*LOCAL_NAMES, listen_host if ":" not in listen_host else f"[{listen_host}]"}
    return frozenset(f"{name}:{port}" for name in names)


class Guard:
    """ASGI middleware: Host, Origin (and CORS), Content-Type and the bearer token."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        hosts: Iterable[str],
        origins: Iterable[str],
        session: bool = True,
    ) -> None:
        self.app = app
        self.token = token
        self.hosts = frozenset(hosts)
        self.origins = frozenset(origins)
        self.session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse what fails a check, with a 4xx JSON error naming what was expected."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        refusal = self._refusal(scope, headers, origin)
        cors = self._cors(origin)
        if refusal is not None:
            status, message = refusal
            await _send_json(send, status, {"error": message}, cors)
            return
        if scope["method"] == "OPTIONS":
            await self._preflight(send, cors, headers)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and cors:
                message["headers"] = [*message.get("headers", []), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _refusal(
        self, scope: Scope, headers: dict[str, str], origin: str | None
    ) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if host not in self.hosts:
            expected = " or ".join(sorted(self.hosts))
            return 400, f"expected Host {expected}, got {host!r} (DNS rebinding is refused)"
        if origin is not None and origin not in self.origins:
            return 403, f"expected an Origin given by --allow-origin, got {origin!r}"
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS":
            if origin is None:
                return 400, "expected an Origin on a CORS preflight"
            return None
        if (method, path) in PUBLIC:
            return None
        if method == "POST":
            problem = _content_type_problem(path, headers.get("content-type"))
            if problem is not None:
                return 415, problem
        if (method, path) == SESSION:
            if not self.session:
                return 403, "sessions are off (--no-session): send the token from agent.token"
            if origin is None:
                return 403, "expected an Origin given by --allow-origin (a browser page's call)"
            return None
        return self._token_problem(headers.get("authorization"))

    def _token_problem(self, authorization: str | None) -> tuple[int, str] | None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return 401, "expected Authorization: Bearer <token from DATA_DIR/agent.token>"
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return 401, "expected the agent's token (DATA_DIR/agent.token), got another"
        return None

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin is None or origin not in self.origins:
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
        ]

    async def _preflight(
        self, send: Send, cors: list[tuple[bytes, bytes]], headers: dict[str, str]
    ) -> None:
        extra = [
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", b"Content-Type, Authorization"),
            (b"access-control-max-age", b"600"),
        ]
        # Chromium's Private Network Access asks before a public page reaches loopback;
        # only allowed origins got this far.
        if headers.get("access-control-request-private-network") == "true":
            extra.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": cors + extra})
        await send({"type": "http.response.body", "body": b""})


def _content_type_problem(path: str, content_type: str | None) -> str | None:
    kind = (content_type or "").split(";")[0].strip().lower()
    allowed = JSON_TYPES + IMAGE_TYPES if path.endswith("/screenshot") else JSON_TYPES
    if kind in allowed:
        return None
    return f"expected Content-Type {' or '.join(allowed)}, got {kind or 'none'}"


async def _send_json(
    send: Send, status: int, body: dict[str, str], extra: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
