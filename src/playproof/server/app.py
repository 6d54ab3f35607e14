"""The ASGI app: HTTP and WebSocket routes only; the work happens in the service's parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from playproof import errors
from playproof.protocol import MAX_BATCH_BYTES, encode
from playproof.server import openapi
from playproof.server.bodies import read_body, require_content_type
from playproof.server.service import Service
from playproof.server.stream import serve_stream
from playproof.stores.base import DeviceInfo

log = logging.getLogger(__name__)

JSON = "application/json"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}

# Most specific first: the first class an error is an instance of decides.
STATUS_OF: tuple[tuple[type[errors.PlayproofError], int], ...] = (
    (errors.TooLarge, 413),
    (errors.BodyTimeout, 408),
    (errors.UnsupportedMedia, 415),
    (errors.ProtocolError, 400),
    (errors.Unauthenticated, 401),
    (errors.RateLimited, 429),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.StoreError, 503),
)


def json_response(payload: object, status: int = 200) -> Response:
    """A JSON response from any protocol object or plain value."""
    return Response(encode(payload), status_code=status, media_type=JSON)


def _service(request: Request | WebSocket) -> Service:
    service: Service = request.app.state.service
    return service


async def _caller(service: Service, request: Request) -> DeviceInfo:
    """The authenticated device, within its rate limit."""
    device = await service.auth.device(request.headers.get("authorization"))
    service.rate.check(device.device_id)
    return device


async def post_batch(request: Request) -> Response:
    """POST /v1/impressions/batch."""
    service = _service(request)
    device = await _caller(service, request)
    require_content_type(request, (JSON,))
    body = await read_body(request, MAX_BATCH_BYTES, service.limits.body_timeout_s)
    return json_response(await service.ingestor.http_batch(body, device))


async def post_status(request: Request) -> Response:
    """POST /v1/devices/status."""
    service = _service(request)
    device = await _caller(service, request)
    require_content_type(request, (JSON,))
    body = await read_body(request, MAX_BATCH_BYTES, service.limits.body_timeout_s)
    await service.ingestor.status(body, device, service.clock())
    return Response(status_code=204)


async def put_screenshot(request: Request) -> Response:
    """PUT /v1/screenshots/{sha256}."""
    service = _service(request)
    device = await _caller(service, request)
    sha256 = request.path_params["sha256"]
    if not SHA256.match(sha256):
        raise errors.ProtocolError(f"expected a lowercase hex SHA-256 in the path, got {sha256!r}")
    media = require_content_type(request, tuple(IMAGE_MAGIC))
    body = await read_body(request, service.limits.screenshot_bytes, service.limits.body_timeout_s)
    if not body.startswith(IMAGE_MAGIC[media]):
        raise errors.ProtocolError(f"expected a {media} body, got bytes that are not one")
    created = await asyncio.to_thread(service.store.blobs.put, sha256, body)
    await service.store.add_screenshot(sha256, media, len(body), device.device_id, service.clock())
    return json_response({"sha256": sha256, "size": len(body)}, 201 if created else 200)


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when the store answers, 503 otherwise."""
    service = _service(request)
    try:
        await service.store.ping()
    except errors.StoreError as exc:
        return json_response({"status": "unavailable", "error": str(exc)}, 503)
    return json_response({"status": "ok", "store": service.store.url.split(":", 1)[0]})


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json."""
    return Response(openapi.document(), media_type=JSON)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    service = _service(request)
    # On an outage the gauge keeps its last value; /healthz tells the outage.
    with contextlib.suppress(errors.StoreError):
        service.metrics.open_gaps.set(await service.store.gap_count())
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def stream(ws: WebSocket) -> None:
    """GET /v1/stream (WebSocket)."""
    service = _service(ws)
    await serve_stream(ws, service)


def _error_status(exc: errors.PlayproofError) -> int:
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return status
    return 500


async def on_playproof_error(request: Request, exc: Exception) -> Response:
    """Our errors become JSON with the status the protocol names."""
    assert isinstance(exc, errors.PlayproofError)
    status = _error_status(exc)
    _service(request).metrics.rejected_requests.labels(str(status)).inc()
    response = json_response({"error": str(exc)}, status)
    if isinstance(exc, errors.Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.RateLimited):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405) as JSON too."""
    assert isinstance(exc, HTTPException)
    return json_response({"error": exc.detail}, exc.status_code)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered 500 without details."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return json_response({"error": "internal error; nothing was acknowledged"}, 500)


def create_app(service: Service) -> Starlette:
    """The ASGI app for a service; starting it opens the store."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=[
            Route("/v1/impressions/batch", post_batch, methods=["POST"]),
            Route("/v1/devices/status", post_status, methods=["POST"]),
            Route("/v1/screenshots/{sha256}", put_screenshot, methods=["PUT"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            WebSocketRoute("/v1/stream", stream),
        ],
        exception_handlers={
            errors.PlayproofError: on_playproof_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.service = service
    return app
