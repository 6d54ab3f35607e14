"""Who calls a route: the service a request reaches, and the device or operator its token names.

Every route taking a device or operator token goes through these, so that each counts
failed authentications against the caller's address (guard.py) and a device's
requests against its rate in the same way.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.websockets import WebSocket

from playproof.server.service import Service
from playproof.stores.base import DeviceInfo, OperatorInfo


def service_of(request: Request | WebSocket) -> Service:
    """The service the app serving this request runs."""
    service: Service = request.app.state.service
    return service


async def device_of(service: Service, request: Request) -> DeviceInfo:
    """The authenticated device, within its request rate."""
    with service.guard.watch(service.guard.client(request)) as before_lookup:
        device = await service.auth.device(request.headers.get("authorization"), before_lookup)
    service.rate.check(device.device_id)
    return device


async def operator_of(service: Service, request: Request) -> OperatorInfo:
    """The operator calling, its failures counted against its address."""
    with service.guard.watch(service.guard.client(request)) as before_lookup:
        return await service.operator_auth.operator(
            request.headers.get("authorization"), before_lookup
        )
