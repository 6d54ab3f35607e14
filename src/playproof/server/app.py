"""The ASGI app: HTTP and WebSocket routes only; the work happens in the service's parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from playproof import errors
from playproof.protocol import MAX_BATCH_BYTES, encode
from playproof.server import (
    catalogs,
    evidence,
    exports,
    formats,
    keys,
    openapi,
    params,
    reports,
    statements,
    verification_report,
)
from playproof.server.bodies import read_body, require_content_type
from playproof.server.callers import device_of, operator_of, service_of
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
    (errors.Overloaded, 503),
)


def json_response(payload: object, status: int = 200) -> Response:
    """A JSON response from any protocol object or plain value."""
    return Response(encode(payload), status_code=status, media_type=JSON)


async def _device_body(service: Service, request: Request, device: DeviceInfo) -> bytes:
    """A device's JSON body, within its byte rate: charged its declared length before it
    is read (refused unread when over), or, sent without one, its size once read."""
    require_content_type(request, (JSON,))
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        service.bytes_rate.check(device.device_id, int(declared))
    body = await read_body(request, MAX_BATCH_BYTES, service.limits.body_timeout_s)
    if not declared.isdigit():
        service.bytes_rate.check(device.device_id, len(body))
    return body


async def post_batch(request: Request) -> Response:
    """POST /v1/impressions/batch."""
    service = service_of(request)
    device = await device_of(service, request)
    body = await _device_body(service, request, device)
    return json_response(await service.ingestor.http_batch(body, device))


async def post_status(request: Request) -> Response:
    """POST /v1/devices/status."""
    service = service_of(request)
    device = await device_of(service, request)
    body = await _device_body(service, request, device)
    await service.ingestor.status(body, device, service.clock())
    return Response(status_code=204)


async def put_screenshot(request: Request) -> Response:
    """PUT /v1/screenshots/{sha256}."""
    service = service_of(request)
    device = await device_of(service, request)
    sha256 = request.path_params["sha256"]
    if not SHA256.match(sha256):
        raise errors.ProtocolError(f"expected a lowercase hex SHA-256 in the path, got {sha256!r}")
    media = require_content_type(request, tuple(IMAGE_MAGIC))
    limit = service.limits.screenshot_bytes
    # Refused before the body is read when its declared length is over the quota (429).
    await service.quota.check(device.device_id, min(_declared_length(request), limit))
    body = await read_body(request, limit, service.limits.body_timeout_s)
    if not body.startswith(IMAGE_MAGIC[media]):
        raise errors.ProtocolError(f"expected a {media} body, got bytes that are not one")
    service.quota.charge(device.device_id, len(body))
    try:
        created = await asyncio.to_thread(service.store.blobs.put, sha256, body)
        await service.store.add_screenshot(
            sha256, media, len(body), device.device_id, service.clock()
        )
    except errors.StoreError:
        service.quota.refund(device.device_id, len(body))
        raise
    return json_response({"sha256": sha256, "size": len(body)}, 201 if created else 200)


def _declared_length(request: Request) -> int:
    value = request.headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else 0


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when the store (and the pipeline, if any) answer, 503 otherwise."""
    # Anyone may ask, so the answer says healthy or not and no more; the log says why.
    service = service_of(request)
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
    return _metrics_response(service_of(request))


# --- operators' routes (operator token; parsing and formats in reports, params, formats)

STATIC = Path(__file__).with_name("static")


async def _operator(request: Request) -> Service:
    """The service, once the caller is known to be an operator."""
    service = service_of(request)
    await operator_of(service, request)
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


async def get_verification_report(request: Request) -> Response:
    """GET /v1/reports/verification."""
    service = await _operator(request)
    table = await verification_report.verification(service.store, request.query_params)
    return table_response(table, _kind(request))


async def get_reject_counts(request: Request) -> Response:
    """GET /v1/reports/rejects."""
    service = await _operator(request)
    table = await reports.reject_counts(service.store, request.query_params, service.clock())
    return table_response(table, _kind(request))


async def get_rejects(request: Request) -> Response:
    """GET /v1/rejects."""
    service = await _operator(request)
    # A page of rejects is JSON only: another `format` is refused, as the document says,
    # rather than answered as JSON the caller did not ask for.
    chosen = request.query_params.get("format")
    if chosen not in (None, "json"):
        raise errors.ProtocolError(f"expected `format` json (or none), got {chosen[:40]!r}")
    return json_response(await reports.rejects_page(service.store, request.query_params))


async def get_devices(request: Request) -> Response:
    """GET /v1/devices: a page of device health summaries, or every device as CSV / NDJSON."""
    service = await _operator(request)
    kind = _kind(request)
    wanted = (service.store, request.query_params, service.clock(), service.policy)
    if kind == "json":
        return json_response(await reports.devices_page(*wanted, service.quota.refused()))
    views = await reports.devices(*wanted, service.quota.refused())
    return table_response(reports.device_table(views), kind)


async def get_device(request: Request) -> Response:
    """GET /v1/devices/{device_id}: one device's health in full."""
    service = await _operator(request)
    device_id = request.path_params["device_id"]
    refused = service.quota.refused().get(device_id, 0)
    return json_response(
        await reports.device(service.store, device_id, service.clock(), service.policy, refused)
    )


async def get_live(request: Request) -> Response:
    """GET /v1/live: records answered per interval lately, connected screens, queued records."""
    service = await _operator(request)
    return json_response(reports.live(service.metrics, request.query_params, service.clock()))


async def put_catalog(request: Request) -> Response:
    """PUT /v1/catalog (?replace=true makes the catalog exactly the document)."""
    service = await _operator(request)
    replace = _flag(request, "replace")
    require_content_type(request, (JSON,))
    body = await read_body(request, catalogs.MAX_CATALOG_BYTES, service.limits.body_timeout_s)
    changes = await catalogs.import_catalog(service.store, body, replace, service.clock())
    version = (await service.store.load_catalog()).version
    return json_response(
        {"version": version, "changes": [catalogs.change_view(c) for c in changes]}
    )


async def get_catalog(request: Request) -> Response:
    """GET /v1/catalog: the active entries, as one document."""
    service = await _operator(request)
    return Response(await catalogs.show(service.store), media_type=JSON)


async def put_reference(request: Request) -> Response:
    """PUT /v1/contents/{content_id}/reference: a reference image of a content."""
    service = await _operator(request)
    content_id = params.id_value("content_id", request.path_params["content_id"])
    media = require_content_type(request, tuple(IMAGE_MAGIC))
    body = await read_body(request, service.limits.screenshot_bytes, service.limits.body_timeout_s)
    if not body.startswith(IMAGE_MAGIC[media]):
        raise errors.ProtocolError(f"expected a {media} body, got bytes that are not one")
    found = await catalogs.add_reference(service.store, content_id, body, service.clock())
    return json_response(found, 201 if found["created"] else 200)


async def get_references(request: Request) -> Response:
    """GET /v1/contents/{content_id}/reference: a content's reference images."""
    service = await _operator(request)
    content_id = params.id_value("content_id", request.path_params["content_id"])
    return json_response(await catalogs.references_view(service.store, content_id))


async def get_reference_image(request: Request) -> Response:
    """GET /v1/contents/{content_id}/references/{sha256}: one reference picture."""
    service = await _operator(request)
    content_id = params.id_value("content_id", request.path_params["content_id"])
    sha256 = request.path_params["sha256"]
    if not SHA256.match(sha256):
        raise errors.ProtocolError(f"expected a lowercase hex SHA-256 in the path, got {sha256!r}")
    data, media = await catalogs.reference_image(service.store, content_id, sha256)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


async def get_verification(request: Request) -> Response:
    """GET /v1/verification: the verifier's queue and lag."""
    service = await _operator(request)
    rate = service.verifier.throughput() if service.verify else None
    status = await catalogs.verification_status(service.store, service.clock(), rate)
    return json_response(status)


# --- buyer exports (server/exports.py): a new export is recorded before its first byte


async def _buyer_export(request: Request, buyer: str) -> Response:
    service = await _operator(request)
    info, body = await exports.open_export(
        service.store,
        buyer,
        request.query_params,
        service.clock(),
        service.limits.dv360_seller_id,
    )
    first = await anext(body)  # a store that cannot answer fails before the status line
    return StreamingResponse(
        formats.prepend(first, body), media_type=exports.MEDIA[buyer], headers=exports.headers(info)
    )


async def get_dv360_export(request: Request) -> Response:
    """GET /v1/exports/dv360: batchCreate request bodies, one a line (since=last, from/to, or
    export_id); the export's id in X-Playproof-Export-Id."""
    return await _buyer_export(request, "dv360")


async def get_playout_export(request: Request) -> Response:
    """GET /v1/exports/playout: a UK Playout digital CSV file (since=last, from/to, or
    export_id); the export's id in X-Playproof-Export-Id."""
    return await _buyer_export(request, "playout")


async def get_evidence_export(request: Request) -> Response:
    """GET /v1/exports/evidence: NDJSON, each impression that started in [from, to) as the
    device sealed it, with its received_at and verification (server/evidence.py)."""
    service = await _operator(request)
    start, end = evidence.window(request.query_params)
    body = evidence.body(service.store, start, end)
    first = await anext(body)  # a store that cannot answer fails before the status line
    return StreamingResponse(formats.prepend(first, body), media_type=formats.NDJSON)


async def get_export(request: Request) -> Response:
    """GET /v1/exports/{export_id}: what an export was asked and holds, and why plays were
    listed apart."""
    service = await _operator(request)
    export_id = exports.export_id_value("export_id", request.path_params["export_id"])
    params.Params(request.query_params, ())
    return json_response(await exports.summary(service.store, export_id))


async def get_export_skipped(request: Request) -> Response:
    """GET /v1/exports/{export_id}/skipped: the plays an export listed apart, with reasons."""
    service = await _operator(request)
    export_id = exports.export_id_value("export_id", request.path_params["export_id"])
    params.Params(request.query_params, ("format",))
    kind = _kind(request)
    body = exports.skipped_body(service.store, export_id, kind)
    first = await anext(body)
    return StreamingResponse(formats.prepend(first, body), media_type=exports.SKIPPED_MEDIA[kind])


Handler = Callable[[Request], Awaitable[Response]]


def by_method(get: Handler, put: Handler) -> Handler:
    """One endpoint for a path read with GET and written with PUT."""

    async def endpoint(request: Request) -> Response:
        return await (put if request.method == "PUT" else get)(request)

    return endpoint


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false")
    if value not in ("true", "false"):
        raise errors.ProtocolError(f"expected `{name}` as true or false, got {value[:40]!r}")
    return value == "true"


async def get_operator(request: Request) -> Response:
    """GET /v1/operator: who the token belongs to (the dashboard's login check)."""
    found = await operator_of(service_of(request), request)
    return json_response({"name": found.name})


async def dashboard(request: Request) -> Response:
    """GET /: the operators' dashboard (it asks for the token itself)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


# --- billing statements (server/statements.py) ---


async def get_billing(request: Request) -> Response:
    """GET /v1/reports/billing: a period's statement; a final one exactly as it was kept."""
    service = await _operator(request)
    document = await statements.billing_statement(
        service.store, request.query_params, service.clock(), service.policy
    )
    return Response(document, media_type=JSON)


async def statement_page(request: Request) -> Response:
    """GET /statement.html: the printable statement, one supplier a page (it reads the API)."""
    return FileResponse(STATIC / "statement.html", headers={"Cache-Control": "no-cache"})


class StreamApp:
    """GET /v1/stream (WebSocket), as a plain ASGI app.

    Starlette's WebSocket accepts, reads the headers and closes; every frame goes
    straight to the server's `receive` and `send`, past the wrapper's state checks and
    the route's exception-handling sender (issue 17: a 1-record frame pays each step).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        await serve_stream(ws, service_of(ws), receive, send)


def _error_status(exc: errors.PlayproofError) -> int:
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return status
    return 500


async def on_playproof_error(request: Request, exc: Exception) -> Response:
    """Our errors become JSON with the status the protocol names."""
    assert isinstance(exc, errors.PlayproofError)
    status = _error_status(exc)
    service_of(request).metrics.rejected_requests.labels(str(status)).inc()
    response = json_response({"error": str(exc)}, status)
    if isinstance(exc, errors.Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    # Rate limits, quotas and overload say how long; a store outage does not.
    retry_after_s = getattr(exc, "retry_after_s", None)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    elif status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405) as JSON too, with their headers (405's `Allow`)."""
    assert isinstance(exc, HTTPException)
    response = json_response({"error": exc.detail}, exc.status_code)
    response.headers.update(exc.headers or {})
    return response


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
            WebSocketRoute("/v1/stream", StreamApp()),
            Route("/", dashboard, methods=["GET"]),
            Route("/v1/operator", get_operator, methods=["GET"]),
            Route("/v1/impressions", get_impressions, methods=["GET"]),
            Route(
                "/v1/impressions/{device_id}/{journal_id}/{seq}/screenshot",
                get_screenshot,
                methods=["GET"],
            ),
            Route("/v1/reports/delivery", get_delivery, methods=["GET"]),
            Route("/v1/reports/verification", get_verification_report, methods=["GET"]),
            Route("/v1/reports/rejects", get_reject_counts, methods=["GET"]),
            Route("/v1/rejects", get_rejects, methods=["GET"]),
            Route("/v1/devices", get_devices, methods=["GET"]),
            Route("/v1/devices/{device_id}", get_device, methods=["GET"]),
            # Device keys (server/keys.py): the device's own, then the operators' routes.
            Route("/v1/devices/keys/{key_id}", keys.put_own_key, methods=["PUT"]),
            Route("/v1/devices/{device_id}/keys", keys.get_device_keys, methods=["GET"]),
            Route("/v1/devices/{device_id}/keys/lock", keys.post_lock, methods=["POST"]),
            Route("/v1/devices/{device_id}/keys/require", keys.post_require, methods=["POST"]),
            Route("/v1/devices/{device_id}/keys/{key_id}", keys.put_device_key, methods=["PUT"]),
            Route(
                "/v1/devices/{device_id}/keys/{key_id}/revoke",
                keys.post_revoke_key,
                methods=["POST"],
            ),
            Route("/v1/keys", keys.get_key_log, methods=["GET"]),
            Route("/v1/live", get_live, methods=["GET"]),
            # One route per path, so that a 405 names every method the path takes.
            Route("/v1/catalog", by_method(get_catalog, put_catalog), methods=["GET", "PUT"]),
            Route(
                "/v1/contents/{content_id}/reference",
                by_method(get_references, put_reference),
                methods=["GET", "PUT"],
            ),
            Route(
                "/v1/contents/{content_id}/references/{sha256}",
                get_reference_image,
                methods=["GET"],
            ),
            Route("/v1/verification", get_verification, methods=["GET"]),
            Route("/v1/exports/dv360", get_dv360_export, methods=["GET"]),
            Route("/v1/exports/playout", get_playout_export, methods=["GET"]),
            # Before /v1/exports/{export_id}, which would take `evidence` for an id.
            Route("/v1/exports/evidence", get_evidence_export, methods=["GET"]),
            Route("/v1/exports/{export_id}", get_export, methods=["GET"]),
            Route("/v1/exports/{export_id}/skipped", get_export_skipped, methods=["GET"]),
            Route("/v1/reports/billing", get_billing, methods=["GET"]),
            Route("/statement.html", statement_page, methods=["GET"]),
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
