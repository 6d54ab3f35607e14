"""The local agent's HTTP API (Starlette), its OpenAPI document and the kiosk script.

Bodies are decoded strictly with the protocol's own id types, so a bad id is a
400 naming the field and the pattern before anything is written; `agent.py`
does the recording, `agent_security.py` decides who may call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from playproof.device.agent import Agent, AgentError
from playproof.device.agent_security import IMAGE_TYPES, Guard
from playproof.device.recorder import Content
from playproof.protocol import MAX_INT, Id

SCRIPT: Final = Path(__file__).with_name("static") / "playproof.js"
MAX_JSON_BYTES: Final = 64 * 1024
T = TypeVar("T")


class StartBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /plays`: what starts playing, and for how long it is scheduled."""

    campaign_id: Id
    ad_group_id: Id
    content_id: Id
    supplier_id: Id
    expected_ms: Annotated[int, Meta(ge=1, le=MAX_INT)]


class EndBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /plays/<id>/end`: why the play ended (`device_restart` is the agent's own)."""

    end_reason: Literal["completed", "skipped", "interrupted", "error"]


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    """A JSON body with nothing in it: `{}`."""


async def _body(request: Request, kind: type[T]) -> T:
    data = await request.body()
    if len(data) > MAX_JSON_BYTES:
        raise AgentError(413, f"expected a JSON body of at most {MAX_JSON_BYTES} bytes")
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise AgentError(400, f"expected {kind.__doc__ or kind.__name__}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise AgentError(400, f"expected a JSON object: {exc}") from None


def build_app(
    agent: Agent, *, token: str, hosts: frozenset[str], origins: tuple[str, ...], session: bool
) -> Guard:
    """The API behind its guard."""

    async def start(request: Request) -> Response:
        body = await _body(request, StartBody)
        content = Content(**msgspec.structs.asdict(body))
        return JSONResponse({"play": await agent.start(content)}, status_code=201)

    async def end(request: Request) -> Response:
        body = await _body(request, EndBody)
        seq = await agent.end(request.path_params["play"], body.end_reason)
        return JSONResponse({"seq": seq})

    async def next_pass(request: Request) -> Response:
        await _body(request, Empty)
        play_id = request.path_params["play"]
        return JSONResponse({"seq": await agent.next_pass(play_id), "play": play_id})

    async def screenshot(request: Request) -> Response:
        play_id = request.path_params["play"]
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in IMAGE_TYPES:
            sha = await agent.hand_in(play_id, await request.body())
        else:
            await _body(request, Empty)
            sha = await agent.screenshot_now(play_id)
        return JSONResponse({"sha256": sha}, status_code=201)

    async def status(request: Request) -> Response:
        return JSONResponse(await agent.status())

    async def new_session(request: Request) -> Response:
        await _body(request, Empty)
        return JSONResponse({"token": token})

    async def script(request: Request) -> Response:
        return Response(
            SCRIPT.read_bytes(),
            media_type="text/javascript",
            headers={"cache-control": "no-cache"},
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    def answering(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except AgentError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            return response

        return wrapped

    routes = [
        Route("/plays", answering(start), methods=["POST"]),
        Route("/plays/{play}/end", answering(end), methods=["POST"]),
        Route("/plays/{play}/pass", answering(next_pass), methods=["POST"]),
        Route("/plays/{play}/screenshot", answering(screenshot), methods=["POST"]),
        Route("/status", answering(status), methods=["GET"]),
        Route("/session", answering(new_session), methods=["POST"]),
        Route("/playproof.js", script, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    return Guard(app, token=token, hosts=hosts, origins=origins, session=session)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": f"expected one of the agent's routes, got {request.url.path}"}, 404
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"method {request.method} is not allowed here"}, 405)


# --- OpenAPI ----------------------------------------------------------------------


def _schema(kind: type[Any]) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components(
        [kind], ref_template="#/components/schemas/{name}"
    )
    return {"schema": schema, "components": components}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_ERROR: Final = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_GUARDED: Final = {
    "400": _error("a body the agent refuses (names the field), or a Host not the agent's"),
    "401": _error("missing or wrong bearer token"),
    "403": _error("an Origin not given by --allow-origin"),
    "415": _error("a Content-Type other than the one expected"),
}


def _op(summary: str, body: dict[str, Any] | None, ok: dict[str, Any], **errors: str) -> Any:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {**ok, **_GUARDED, **{k[1:]: _error(v) for k, v in errors.items()}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _json_answer(description: str, properties: dict[str, Any], code: str = "200") -> Any:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {code: {"description": description, "content": {"application/json": {"schema": schema}}}}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for every route of the agent."""
    start, end = _schema(StartBody), _schema(EndBody)
    empty = {"application/json": {"schema": {"type": "object", "maxProperties": 0}}}
    picture = {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES}
    play_param = [{"name": "play", "in": "path", "required": True, "schema": {"type": "string"}}]
    string, integer = {"type": "string"}, {"type": "integer"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "playproof local agent", "version": "1"},
        "components": {
            "schemas": {**start["components"], **end["components"]},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/plays": {
                "post": _op(
                    "Start a play; answered once the start is durable in the journal",
                    {"application/json": start},
                    _json_answer("the play's id", {"play": string}, "201"),
                    e503="the journal could not record the play",
                )
            },
            "/plays/{play}/end": {
                "parameters": play_param,
                "post": _op(
                    "End a play; the sequence of its sealed record",
                    {"application/json": end},
                    _json_answer("the sealed record's sequence", {"seq": integer}),
                    e404="no play of that id was started on this agent",
                    e409="the play has already ended",
                ),
            },
            "/plays/{play}/pass": {
                "parameters": play_param,
                "post": _op(
                    "A loop's next pass: seal this pass `completed`, open the next (same id)",
                    empty,
                    _json_answer("the sealed pass", {"seq": integer, "play": string}),
                    e404="no play of that id",
                    e409="the play has already ended",
                ),
            },
            "/plays/{play}/screenshot": {
                "parameters": play_param,
                "post": _op(
                    "Take the proof screenshot from the screen now ({}), or hand one in",
                    {**empty, **picture},
                    _json_answer("the picture's SHA-256", {"sha256": string}, "201"),
                    e404="no play of that id",
                    e409="the play has ended, or there is no screen to take one from",
                    e413="a picture over 10 MiB",
                ),
            },
            "/status": {
                "get": _op(
                    "Journal depth, clock state, connection and last error",
                    None,
                    _json_answer(
                        "the agent's state",
                        {
                            "queue_depth": integer,
                            "open_plays": integer,
                            "clock": {"type": "object"},
                            "connection": {"type": ["string", "null"]},
                            "last_error": {"type": ["string", "null"]},
                            "status": {"type": "object"},
                        },
                    ),
                )
            },
            "/session": {
                "post": {
                    **_op(
                        "The bearer token, for a kiosk page on an allowed Origin (no token needed)",
                        empty,
                        _json_answer("the token", {"token": string}),
                    ),
                    "security": [],
                }
            },
            "/playproof.js": {
                "get": {
                    "summary": "The kiosk script (nothing secret in it)",
                    "security": [],
                    "responses": {"200": {"description": "JavaScript"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
    }
