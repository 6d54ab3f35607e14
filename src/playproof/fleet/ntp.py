"""An NTP server on loopback that tells simulated time, so simulated screens can be in sync.

Each worker of the simulator runs one (a single UDP socket); screens with good
clocks are pointed at it and go through the SDK's real SNTP exchange, so their
records are `clock_synced` as a real screen's would be. ntplib builds the
packets; the client's transmit timestamp is echoed as the originate timestamp,
as RFC 4330 asks and as the SDK checks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import ntplib

from playproof.fleet.simclock import SimClock

log = logging.getLogger(__name__)

REFERENCE_ID = int.from_bytes(b"SIM\x00", "big")


class _Responder(asyncio.DatagramProtocol):
    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket to answer on."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        """Answer one request with the simulated time."""
        if len(data) < 48 or self.transport is None:
            return
        self.transport.sendto(answer(data, self.clock.wall()), addr)
        self.answered += 1


def answer(request: bytes, now_s: float) -> bytes:
    """A stratum-2 server reply to `request` saying the time is `now_s` (UTC seconds)."""
    reply = ntplib.NTPPacket(version=3, mode=4, tx_timestamp=ntplib.system_to_ntp_time(now_s))
    reply.stratum = 2
    reply.ref_id = REFERENCE_ID
    reply.ref_timestamp = reply.recv_timestamp = reply.tx_timestamp
    data = bytearray(reply.to_data())
    data[24:32] = request[40:48]  # originate = the client's transmit timestamp, verbatim
    return bytes(data)


class SimNtpServer:
    """A loopback NTP server on simulated time; `start` it, read `address`, `close` it."""

    def __init__(self, clock: SimClock) -> None:
        self._responder = _Responder(clock)
        self.port = 0

    async def start(self) -> SimNtpServer:
        """Listen on a free loopback UDP port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self._responder, local_addr=("127.0.0.1", 0)
        )
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, as DeviceConfig.ntp_servers takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def answered(self) -> int:
        """Requests answered so far."""
        return self._responder.answered

    def close(self) -> None:
        """Stop answering."""
        if self._responder.transport is not None:
            self._responder.transport.close()
