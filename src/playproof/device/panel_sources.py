"""Panel sources that talk to the display: HDMI-CEC (`cec-ctl`) and Samsung MDC (TCP 1515).

Both are read by `panel.PanelMonitor` in the background, with a time limit; any
failure here raises and the monitor counts the reading as `unknown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from typing import Final

from playproof.config import PANEL_CEC_DEVICE, PANEL_MDC_ID, PANEL_MDC_PORT, PANEL_TIMEOUT_S
from playproof.device.panel import PanelError
from playproof.protocol import PanelSource as PanelSourceName
from playproof.protocol import PanelState

log = logging.getLogger(__name__)

# --- HDMI-CEC ------------------------------------------------------------------

_PHYS = re.compile(r"Physical Address\s*:\s*([0-9a-fA-F]\.[0-9a-fA-F]\.[0-9a-fA-F]\.[0-9a-fA-F])")
_POWER = re.compile(r"pwr-state\s*:\s*([A-Za-z][A-Za-z -]*?)\s*(?:\(0x[0-9a-fA-F]+\))?\s*$", re.M)
_ACTIVE = re.compile(r"phys-addr\s*:\s*([0-9a-fA-F]\.[0-9a-fA-F]\.[0-9a-fA-F]\.[0-9a-fA-F])")


def parse_physical_address(output: str) -> str | None:
    """Our physical address as `cec-ctl` reports it when configuring the adapter."""
    found = _PHYS.search(output)
    return found.group(1).lower() if found else None


def parse_power(output: str) -> PanelState | None:
    """The TV's power from `--give-device-power-status` output; None when it did not answer.

    `on` is on; `standby` and the transitions (`to-on`, `to-standby`, and older
    wordings such as "in transition standby to on") are not on: `standby`.
    """
    found = _POWER.search(output)
    if found is None:
        return None
    word = found.group(1).strip().lower()
    if word == "on":
        return "on"
    if "standby" in word or word.startswith("to-") or "transition" in word:
        return "standby"
    return "unknown"


def parse_active_source(output: str) -> str | None:
    """The physical address that answered `--request-active-source` (None: no answer)."""
    found = _ACTIVE.search(output)
    return found.group(1).lower() if found else None


class CecPanel:
    """HDMI-CEC through Debian's `cec-ctl` (package v4l-utils), run as a subprocess.

    The first reading claims a logical address as a playback device (`--playback`)
    and learns our physical address. Each reading then asks the TV (logical address
    0) for its power status: no answer is `unknown` (a TV unplugged, or without
    CEC); `standby` and the transitions are `standby`. With the TV on, it asks who
    the active source is: our physical address is `on`, another one is `no_signal`
    (the TV shows another input), and no answer is `unknown` (nobody claims the
    screen; CEC cannot tell more).
    """

    name: PanelSourceName = "cec"
    # The commands, as cec-ctl spells them (v4l-utils 1.2x).
    CLAIM: Final = ("--playback",)
    POWER: Final = ("--to", "0", "--give-device-power-status")
    ACTIVE: Final = ("--to", "15", "--request-active-source")

    def __init__(
        self,
        device: str = PANEL_CEC_DEVICE,
        *,
        program: str = "cec-ctl",
        timeout_s: float = PANEL_TIMEOUT_S,
    ) -> None:
        self.device = device
        self.program = program
        self.timeout_s = timeout_s
        self.physical_address: str | None = None

    async def read(self) -> PanelState:
        """The TV's state now, from two or three cec-ctl runs."""
        if self.physical_address is None:
            claimed = await self._run(*self.CLAIM)
            self.physical_address = parse_physical_address(claimed)
            if self.physical_address is None:
                raise PanelError(f"{self.program} reported no physical address: {claimed[:200]!r}")
        power = parse_power(await self._run(*self.POWER))
        if power != "on":
            return power or "unknown"
        active = parse_active_source(await self._run(*self.ACTIVE))
        if active is None:
            return "unknown"
        return "on" if active == self.physical_address else "no_signal"

    async def _run(self, *args: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.program,
                "-d",
                self.device,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise PanelError(f"cannot run {self.program}: {exc.strerror}") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except BaseException:
            # Timed out or cancelled: the child must not outlive the reading.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        if proc.returncode != 0 and not text.strip():
            raise PanelError(f"{self.program} {' '.join(args)} failed ({proc.returncode})")
        # A non-zero exit with output (an unacknowledged message) is still parsed.
        return text


# --- Samsung MDC -----------------------------------------------------------------

HEADER: Final = 0xAA
REPLY: Final = 0xFF
ACK: Final = 0x41  # 'A'
NAK: Final = 0x4E  # 'N'
CMD_POWER: Final = 0x11  # data 1 = on, 0 = off
CMD_PANEL: Final = 0xF9  # inverted: 0 = panel on, 1 = panel off
TLS_HELLO: Final = b"MDCSTART<<TLS>>"
AUTH_PASS: Final = b"MDCAUTH<<PASS>>"


def mdc_checksum(body: bytes) -> int:
    """The MDC checksum: the sum of the bytes after the 0xAA header, mod 256."""
    return sum(body) % 256


def mdc_frame(command: int, display_id: int, data: bytes = b"") -> bytes:
    """A request frame: 0xAA, command, display id, data length, data, checksum."""
    body = bytes((command, display_id, len(data))) + data
    return bytes((HEADER,)) + body + bytes((mdc_checksum(body),))


class MdcPanel:
    """Samsung MDC (Multiple Display Control) over TCP, port 1515 by default.

    Each reading connects, asks the power status (0x11: 1 on, 0 off) and, with the
    display on, the panel status (0xF9, inverted: 0 means the panel is lit, 1 that
    it is dark while the display runs), and disconnects. Power off or panel off is
    `off`; a NAK (a display that does not support the query) is `unknown`.

    Recent displays default to the secured protocol: the display opens with
    `MDCSTART<<TLS>>`, the connection turns TLS (the display's certificate is its
    own, self-signed: not verified unless `ssl_context` says otherwise), the PIN set
    on the display goes as four ASCII digits, and `MDCAUTH<<PASS>>` admits us. That
    handshake follows the open-source python-samsung-mdc client; it has not been
    checked against a display here. With no PIN the plain protocol is spoken.
    """

    name: PanelSourceName = "mdc"

    def __init__(
        self,
        host: str,
        port: int = PANEL_MDC_PORT,
        *,
        display_id: int = PANEL_MDC_ID,
        timeout_s: float = PANEL_TIMEOUT_S,
        pin: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.display_id = display_id
        self.timeout_s = timeout_s
        self.pin = pin
        self.ssl_context = ssl_context

    async def read(self) -> PanelState:
        """The display's state now, over one connection."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise PanelError(f"cannot reach MDC {self.host}:{self.port}: {exc}") from None
        try:
            if self.pin is not None:
                await self._secure(reader, writer)
            power = await self._query(reader, writer, CMD_POWER)
            if power is None:
                return "unknown"
            if power == 0:
                return "off"
            panel = await self._query(reader, writer, CMD_PANEL)
            if panel is None:
                return "unknown"
            return "on" if panel == 0 else "off"
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _query(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: int
    ) -> int | None:
        """Send a status query; its first value byte (None for a NAK)."""
        writer.write(mdc_frame(command, self.display_id))
        await writer.drain()
        try:
            head = await reader.readexactly(4)
            if head[0] != HEADER or head[1] != REPLY:
                raise PanelError(f"MDC: expected a reply frame, got {head.hex()}")
            rest = await reader.readexactly(head[3] + 1)
        except asyncio.IncompleteReadError as exc:
            raise PanelError(f"MDC: the display closed mid-reply ({exc.partial.hex()})") from None
        data, checksum = rest[:-1], rest[-1]
        if mdc_checksum(head[1:] + data) != checksum:
            raise PanelError(f"MDC: bad checksum in {(head + rest).hex()}")
        if head[2] != self.display_id:
            raise PanelError(f"MDC: reply from display {head[2]}, asked {self.display_id}")
        if len(data) < 2 or data[1] != command:
            raise PanelError(f"MDC: reply does not answer command {command:#04x}")
        if data[0] == NAK:
            log.debug("MDC display %d refused command %#04x", self.display_id, command)
            return None
        if data[0] != ACK or len(data) < 3:
            raise PanelError(f"MDC: expected ACK with a value, got {data.hex()}")
        return data[2]

    async def _secure(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await reader.readexactly(len(TLS_HELLO))
        if hello != TLS_HELLO:
            raise PanelError(f"MDC: expected the secured protocol's greeting, got {hello!r}")
        await writer.start_tls(self.ssl_context or _display_tls())
        assert self.pin is not None
        writer.write(self.pin.rjust(4, "0").encode("ascii"))
        await writer.drain()
        answer = await reader.read(64)
        if not answer.startswith(AUTH_PASS):
            raise PanelError(f"MDC: PIN refused by the display: {answer[:40]!r}")


def _display_tls() -> ssl.SSLContext:
    """TLS to a display: its certificate is self-signed, so the PIN is what authenticates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
