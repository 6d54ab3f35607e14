"""The ASGI app: HTTP and WebSocket routes only; the work happens in the service's parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from playproof import errors
from playproof.protocol import MAX_BATCH_BYTES, encode
from playproof.server import formats, openapi, reports
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
    """GET /healthz: 200 when the store (and the pipeline, if any) answer, 503 otherwise."""
    # Anyone may ask, so the answer says healthy or not and no more; the log says why.
    service = _service(request)
    # A simulated clock is shown loudly (it is absent on the real clock).
    clock = (
        {}
        if service.clock_info is None
        else {"clock": {**service.clock_info, "now_ms": service.clock()}}
    )
    try:
        await service.ping()  # the store, and the pipeline when there is one
    except errors.StoreError as exc:
        service.unhealthy(exc)
        return json_response({"status": "unavailable", **clock}, 503)
    pipeline = {} if service.pipeline is None else {"pipeline": service.pipeline.kind}
    store = service.store.url.split(":", 1)[0]
    return json_response({"status": "ok", "store": store, **pipeline, **clock})


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json."""
    return Response(openapi.document(), media_type=JSON)


def _metrics_response(service: Service) -> Response:
    # Gauges that need the store are refreshed in the background (Service): a scrape,
    # however frequent, costs the store nothing.
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format, for an operator token."""
    return _metrics_response(await _operator(request))


async def open_metrics(request: Request) -> Response:
    """GET /metrics on the `--metrics-listen` address: no token, it is on a private network."""
    return _metrics_response(_service(request))


# --- operators' routes (operator token; parsing and formats in reports, params, formats)

STATIC = Path(__file__).with_name("static")


async def _operator(request: Request) -> Service:
    """The service, once the caller is known to be an operator."""
    service = _service(request)
    await service.operator_auth.operator(request.headers.get("authorization"))
    return service


def _kind(request: Request) -> str:
    return formats.negotiate(request.headers.get("accept"), request.query_params.get("format"))


def table_response(table: reports.Table, kind: str, key: str = "rows") -> Response:
    """A table as JSON (rows as objects, with its meta), CSV or NDJSON."""
    if kind == "csv":
        return Response(formats.csv_text(table.columns, table.rows), media_type=formats.CSV)
    if kind == "ndjson":
        return Response(formats.ndjson_bytes(table.columns, table.rows), media_type=formats.NDJSON)
    return json_response({**table.meta, key: table.records()})


async def get_impressions(request: Request) -> Response:
    """GET /v1/impressions: a page as JSON, or a streamed CSV / NDJSON export."""
    service = await _operator(request)
    kind = _kind(request)
    if kind == "json":
        return json_response(await reports.impressions_page(service.store, request.query_params))
    body = reports.export_body(service.store, request.query_params, kind)
    first = await anext(body)  # errors before the first byte still get their status
    return StreamingResponse(
        formats.prepend(first, body),
        media_type=formats.FORMATS[kind],
        headers={"Content-Disposition": f'attachment; filename="impressions.{kind}"'},
    )


async def get_screenshot(request: Request) -> Response:
    """GET /v1/impressions/{device_id}/{journal_id}/{seq}/screenshot."""
    service = await _operator(request)
    p = request.path_params
    data, media = await reports.screenshot(service.store, p["device_id"], p["journal_id"], p["seq"])
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


async def get_delivery(request: Request) -> Response:
    """GET /v1/reports/delivery."""
    service = await _operator(request)
    table = await reports.delivery(service.store, request.query_params)
    return table_response(table, _kind(request))


async def get_reject_counts(request: Request) -> Response:
    """GET /v1/reports/rejects."""
    service = await _operator(request)
    table = await reports.reject_counts(service.store, request.query_params, service.clock())
    return table_response(table, _kind(request))


async def get_rejects(request: Request) -> Response:
    """GET /v1/rejects."""
    service = await _operator(request)
    return json_response(await reports.rejects_page(service.store, request.query_params))


async def get_devices(request: Request) -> Response:
    """GET /v1/devices: every device's health summary."""
    service = await _operator(request)
    views = await reports.devices(
        service.store, request.query_params, service.clock(), service.policy
    )
    kind = _kind(request)
    if kind == "json":
        return json_response({"devices": views})
    return table_response(reports.device_table(views), kind)


async def get_device(request: Request) -> Response:
    """GET /v1/devices/{device_id}: one device's health in full."""
    service = await _operator(request)
    device_id = request.path_params["device_id"]
    return json_response(
        await reports.device(service.store, device_id, service.clock(), service.policy)
    )


async def get_live(request: Request) -> Response:
    """GET /v1/live: records answered per interval lately, connected screens, queued records."""
    service = await _operator(request)
    return json_response(reports.live(service.metrics, request.query_params, service.clock()))


async def get_operator(request: Request) -> Response:
    """GET /v1/operator: who the token belongs to (the dashboard's login check)."""
    service = _service(request)
    found = await service.operator_auth.operator(request.headers.get("authorization"))
    return json_response({"name": found.name})


async def dashboard(request: Request) -> Response:
    """GET /: the operators' dashboard (it asks for the token itself)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


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
            Route("/", dashboard, methods=["GET"]),
            Route("/v1/operator", get_operator, methods=["GET"]),
            Route("/v1/impressions", get_impressions, methods=["GET"]),
            Route(
                "/v1/impressions/{device_id}/{journal_id}/{seq}/screenshot",
                get_screenshot,
                methods=["GET"],
            ),
            Route("/v1/reports/delivery", get_delivery, methods=["GET"]),
            Route("/v1/reports/rejects", get_reject_counts, methods=["GET"]),
            Route("/v1/rejects", get_rejects, methods=["GET"]),
            Route("/v1/devices", get_devices, methods=["GET"]),
            Route("/v1/devices/{device_id}", get_device, methods=["GET"]),
            Route("/v1/live", get_live, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
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


def create_metrics_app(service: Service) -> Starlette:
    """The app of the `--metrics-listen` address: GET /metrics alone, of a running service."""
    app = Starlette(
        routes=[Route("/metrics", open_metrics, methods=["GET"])],
        exception_handlers={HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.service = service
    return app
