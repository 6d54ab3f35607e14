"""Panel sources against stand-ins for the hardware, and what a play records of them.

We have no display here, so each source talks to a stand-in that speaks its
interface: `drm` reads a sysfs tree the test builds in tmp_path, `cec` runs a
stand-in `cec-ctl` executable (a small Python script put first on PATH) that
prints what the real one prints, and `mdc` talks to a small asyncio TCP responder
that speaks the Samsung MDC frame format (plain, and the secured TLS-with-PIN
variant). The journal, recorder, monitor and key are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from playproof.device import Clock, Device, Journal, Recorder
from playproof.device.keys import DeviceKey, save_acknowledged
from playproof.device.panel import (
    DrmPanel,
    NoPanel,
    PanelConfig,
    PanelError,
    PanelMonitor,
    make_source,
    worst,
)
from playproof.device.panel_sources import CecPanel, MdcPanel, mdc_checksum
from playproof.errors import ConfigError
from playproof.protocol import PANEL_STATES, PanelState
from tests.device.helpers import (
    PlayerProcess,
    Service,
    content,
    device_config,
    eventually,
    impressions,
    item,
    query,
    write_playlist,
)
from tests.support import provision

# --- worst of ----------------------------------------------------------------

STATES: list[PanelState] = ["off", "standby", "no_signal", "unknown", "on"]


@given(st.lists(st.sampled_from(STATES), min_size=1))
def test_worst_is_one_of_the_states_and_none_is_worse(states: list[PanelState]) -> None:
    found = worst(states)
    assert found in states
    assert all(PANEL_STATES.index(found) <= PANEL_STATES.index(s) for s in states)


@given(st.lists(st.sampled_from(STATES)))
def test_worst_is_on_only_when_every_reading_is_on(states: list[PanelState]) -> None:
    assert (worst(states) == "on") == (bool(states) and all(s == "on" for s in states))


def test_worst_of_no_reading_is_unknown() -> None:
    assert worst([]) == "unknown"


# --- drm ---------------------------------------------------------------------

EDID = bytes.fromhex("00ffffffffffff00") + bytes(120)


def connector(root: Path, name: str, status: str, dpms: str = "On", edid: bytes = EDID) -> Path:
    """A DRM connector folder as sysfs shows it."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status").write_text(f"{status}\n")
    (folder / "dpms").write_text(f"{dpms}\n")
    (folder / "edid").write_bytes(edid)
    (folder / "enabled").write_text("enabled\n")
    return folder


@pytest.mark.parametrize(
    ("status", "dpms", "edid", "expected"),
    [
        ("connected", "On", EDID, "on"),
        ("connected", "On", b"", "unknown"),
        ("connected", "Off", EDID, "off"),
        ("connected", "Standby", EDID, "standby"),
        ("connected", "Suspend", EDID, "standby"),
        ("disconnected", "Off", b"", "no_signal"),
        ("unknown", "On", EDID, "unknown"),
    ],
)
async def test_drm_reads_status_edid_and_dpms(
    tmp_path: Path, status: str, dpms: str, edid: bytes, expected: str
) -> None:
    connector(tmp_path, "card0-HDMI-A-1", status, dpms, edid)
    assert await DrmPanel(tmp_path).read() == expected


async def test_drm_named_connector_is_the_one_read(tmp_path: Path) -> None:
    connector(tmp_path, "card0-HDMI-A-1", "connected", "On")
    connector(tmp_path, "card0-DP-1", "disconnected")
    assert await DrmPanel(tmp_path, "DP-1").read() == "no_signal"
    assert await DrmPanel(tmp_path, "card0-HDMI-A-1").read() == "on"
    # Unnamed: the display the player drives is the one that is connected.
    assert await DrmPanel(tmp_path).read() == "on"


async def test_drm_without_connectors_fails_and_the_monitor_says_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(PanelError, match="no DRM connector"):
        await DrmPanel(tmp_path).read()
    monitor = PanelMonitor(DrmPanel(tmp_path, "HDMI-A-9"))
    with caplog.at_level(logging.WARNING, logger="playproof.device.panel"):
        reading = await monitor.observe()
    assert reading.state == "unknown"
    assert "no DRM connector named HDMI-A-9" in caplog.text


# --- cec -----------------------------------------------------------------------

STAND_IN_CEC = r'''
"""Stand-in for cec-ctl (v4l-utils): prints what the real one prints for a scenario."""
import sys, time
from pathlib import Path

scenario = (Path(__file__).parent / "scenario").read_text().strip()
args = sys.argv[1:]
(Path(__file__).parent / "calls").open("a").write(" ".join(args) + "\n")
assert args[:2] == ["-d", "/dev/cec0"], args
if scenario == "hang":
    time.sleep(60)
if "--playback" in args:
    print("Driver Info:")
    print("\tDriver Name                : stand-in")
    print("\tAdapter Name               : stand-in")
    print("\tCapabilities               : 0x0000011e")
    print("\tPhysical Address           : 1.0.0.0")
    print("\tLogical Address Mask       : 0x0010")
    print("\tCEC Version                : 2.0")
    print("\tVendor ID                  : 0x000c03 (HDMI)")
    print("\tOSD Name                   : 'Playback'")
    print("\tLogical Addresses          : 1 (Allow RC Passthrough)")
    print()
    print("\t  Logical Address          : 4 (Playback Device 1)")
    print("\t    Primary Device Type    : Playback")
elif "--give-device-power-status" in args:
    print("Transmit from Playback Device 1 to TV (4 to 0):")
    print("GIVE_DEVICE_POWER_STATUS (0x8f)")
    if scenario == "no-answer":
        print("\tSequence: 12 Tx Timestamp: 1234.567s")
        print("\tTx, Not Acknowledged (4), Max Retries")
        sys.exit(1)
    power = {"standby": "standby (0x01)", "to-on": "to-on (0x02)",
             "to-standby": "to-standby (0x03)"}.get(scenario, "on (0x00)")
    print("\tSequence: 12 Rx Timestamp: 1234.600s")
    print("    Received from TV (0 to 4): REPORT_POWER_STATUS (0x90):")
    print(f"\t\tpwr-state: {power}")
elif "--request-active-source" in args:
    print("Transmit from Playback Device 1 to all (4 to 15):")
    print("REQUEST_ACTIVE_SOURCE (0x85)")
    print("\tSequence: 13 Tx Timestamp: 1234.700s")
    if scenario == "nobody-active":
        print("\tTimeout")
        sys.exit(1)
    phys = "2.0.0.0" if scenario == "other-input" else "1.0.0.0"
    print("    Received from Playback Device 2 (8 to 15): ACTIVE_SOURCE (0x82):")
    print(f"\t\tphys-addr: {phys}")
else:
    sys.exit(2)
'''


@pytest.fixture
def cec_ctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `cec-ctl` first on PATH; write the scenario into `<folder>/scenario`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "cec-ctl"
    script.write_text(f"#!{sys.executable}\n{STAND_IN_CEC}")
    script.chmod(0o755)
    (folder / "scenario").write_text("on")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return folder


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("on", "on"),
        ("standby", "standby"),
        ("to-on", "standby"),
        ("to-standby", "standby"),
        ("other-input", "no_signal"),
        ("no-answer", "unknown"),
        ("nobody-active", "unknown"),
    ],
)
async def test_cec_reads_power_and_active_source_from_cec_ctl(
    cec_ctl: Path, scenario: str, expected: str
) -> None:
    (cec_ctl / "scenario").write_text(scenario)
    source = make_source("cec", PanelConfig())
    assert await source.read() == expected


async def test_cec_claims_a_logical_address_once(cec_ctl: Path) -> None:
    source = CecPanel()
    await source.read()
    await source.read()
    calls = (cec_ctl / "calls").read_text().splitlines()
    assert [c for c in calls if "--playback" in c] == ["-d /dev/cec0 --playback"]
    assert source.physical_address == "1.0.0.0"


async def test_cec_that_hangs_is_killed_and_counts_unknown(
    cec_ctl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (cec_ctl / "scenario").write_text("hang")
    monitor = PanelMonitor(CecPanel(timeout_s=0.3), timeout_s=5.0)
    with caplog.at_level(logging.WARNING, logger="playproof.device.panel"):
        reading = await monitor.observe()
    assert reading.state == "unknown"
    assert monitor.last_error is not None
    assert "panel source cec failed" in caplog.text


async def test_cec_without_the_program_counts_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = PanelMonitor(CecPanel(program="no-such-cec-ctl-here"))
    assert (await monitor.observe()).state == "unknown"
    assert "cannot run no-such-cec-ctl-here" in str(monitor.last_error)


# --- mdc -----------------------------------------------------------------------


class MdcDisplay:
    """A stand-in Samsung display: answers MDC status queries over TCP as told.

    `power` and `panel` are the values it reports (panel inverted: 0 lit); a command
    in `nak` is refused; with `silent` it reads and never answers; with `pin` it
    speaks the secured protocol (greeting, TLS, PIN) first.
    """

    def __init__(self, display_id: int = 1) -> None:
        self.display_id = display_id
        self.power = 1
        self.panel = 0
        self.nak: set[int] = set()
        self.silent = False
        self.pin: str | None = None
        self.tls: ssl.SSLContext | None = None
        self.frames: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.pin is not None:
                assert self.tls is not None
                writer.write(b"MDCSTART<<TLS>>")
                await writer.drain()
                await writer.start_tls(self.tls)
                pin = await reader.readexactly(4)
                admitted = pin.decode() == self.pin
                writer.write(b"MDCAUTH<<PASS>>" if admitted else b"MDCAUTH<<FAIL:0x01>>")
                await writer.drain()
                if pin.decode() != self.pin:
                    return
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(head[3] + 1)
                frame = head + body
                self.frames.append(frame)
                assert frame[0] == 0xAA and mdc_checksum(frame[1:-1]) == frame[-1], frame.hex()
                if self.silent:
                    continue
                command = frame[1]
                writer.write(self._reply(command))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _reply(self, command: int) -> bytes:
        if command in self.nak:
            data = bytes((0x4E, command, 0x01))
        else:
            value = {0x11: self.power, 0xF9: self.panel}[command]
            data = bytes((0x41, command, value))
        body = bytes((0xFF, self.display_id, len(data))) + data
        return b"\xaa" + body + bytes((mdc_checksum(body),))


@pytest.fixture
async def display() -> AsyncIterator[MdcDisplay]:
    stand_in = MdcDisplay()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


def mdc(display: MdcDisplay, **kw: Any) -> MdcPanel:
    return MdcPanel("127.0.0.1", display.port, display_id=display.display_id, **kw)


@pytest.mark.parametrize(
    ("power", "panel", "nak", "expected"),
    [
        (1, 0, set(), "on"),
        (0, 0, set(), "off"),
        (1, 1, set(), "off"),
        (1, 0, {0xF9}, "unknown"),
        (1, 0, {0x11}, "unknown"),
    ],
)
async def test_mdc_reads_power_and_panel_status(
    display: MdcDisplay, power: int, panel: int, nak: set[int], expected: str
) -> None:
    display.power, display.panel, display.nak = power, panel, nak
    assert await mdc(display).read() == expected
    # The queries as the display saw them: power first, with our id and a good checksum.
    assert display.frames[0] == bytes((0xAA, 0x11, 0x01, 0x00, 0x12))


async def test_mdc_display_that_stays_silent_counts_unknown(display: MdcDisplay) -> None:
    display.silent = True
    monitor = PanelMonitor(mdc(display), timeout_s=0.3)
    assert (await monitor.observe()).state == "unknown"
    assert "no answer" in str(monitor.last_error)


async def test_mdc_unreachable_display_counts_unknown(display: MdcDisplay) -> None:
    await display.stop()
    monitor = PanelMonitor(mdc(display))
    assert (await monitor.observe()).state == "unknown"
    assert "cannot reach MDC" in str(monitor.last_error)


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate, as a display has."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "display")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_mdc_secured_protocol_speaks_tls_and_sends_the_pin(
    display: MdcDisplay, tmp_path: Path
) -> None:
    display.pin, display.tls = "1234", self_signed(tmp_path)
    assert await mdc(display, pin="1234").read() == "on"
    monitor = PanelMonitor(mdc(display, pin="9999"))
    assert (await monitor.observe()).state == "unknown"
    assert "PIN refused" in str(monitor.last_error)


def test_mdc_needs_a_host_and_unknown_sources_are_refused() -> None:
    with pytest.raises(ConfigError, match="--panel-mdc-host"):
        make_source("mdc", PanelConfig())
    with pytest.raises(ConfigError, match="drm, cec, mdc, none"):
        make_source("hdmi", PanelConfig())
    assert isinstance(make_source("none"), NoPanel)


# --- what a play records ---------------------------------------------------------


class HangingDisplay:
    """Stand-in for a display that never answers (a read that hangs until released)."""

    name = "vendor"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def read(self) -> PanelState:
        self.calls += 1
        await self.release.wait()
        return "on"


class FailingDisplay:
    """Stand-in for a display whose control link breaks after its first answer."""

    name = "vendor"

    def __init__(self) -> None:
        self.calls = 0

    async def read(self) -> PanelState:
        self.calls += 1
        if self.calls > 1:
            raise ConnectionResetError("link to the display lost")
        return "on"


@pytest.fixture
async def signing_recorder(tmp_path: Path) -> AsyncIterator[tuple[Journal, DeviceKey]]:
    """A real journal and an acknowledged key (its state file written as registration does)."""
    data = tmp_path / "device"
    key = await DeviceKey.open(data, journal_existed=False, panel_source="vendor")
    save_acknowledged(data, key.key_id)
    key = await DeviceKey.open(data, journal_existed=False, panel_source="vendor")
    journal = await Journal.open(data, "scr-1")
    yield journal, key
    await journal.aclose()


def recorder_for(journal: Journal, key: DeviceKey, monitor: PanelMonitor) -> Recorder:
    return Recorder(journal, Clock([]), store_id="store-1", key=key, panel=monitor)


async def test_a_hanging_source_never_delays_the_durable_start_and_reads_unknown(
    signing_recorder: tuple[Journal, DeviceKey],
) -> None:
    journal, key = signing_recorder
    display = HangingDisplay()
    monitor = PanelMonitor(display, timeout_s=3600)  # it will not time out in this test
    recorder = recorder_for(journal, key, monitor)
    # A deadline, not a speed: a start that waited for the display would never return.
    play = await asyncio.wait_for(recorder.start(content(expected_ms=1000)), 60)
    # The start is journaled while the display has not answered.
    assert display.calls == 1 and monitor.latest is None
    assert (await journal.stats()).open_plays == 1
    record = await play.end()
    assert record.v == 2 and record.panel_source == "vendor"
    assert record.panel_state == "unknown"
    display.release.set()
    await monitor.aclose()


async def test_a_source_failing_mid_play_degrades_to_unknown_with_a_log_line(
    signing_recorder: tuple[Journal, DeviceKey], caplog: pytest.LogCaptureFixture
) -> None:
    journal, key = signing_recorder
    display = FailingDisplay()
    monitor = PanelMonitor(display)
    recorder = recorder_for(journal, key, monitor)
    with caplog.at_level(logging.WARNING, logger="playproof.device.panel"):
        play = await recorder.start(content(expected_ms=1000))
        await eventually(_async(lambda: monitor.latest is not None), 10, "the start's reading")
        assert monitor.last_state == "on"
        # The next reading (the poller's, mid-play) finds the link broken.
        assert (await monitor.observe()).state == "unknown"
        record = await play.end()
    assert record.panel_state == "unknown"
    assert "link to the display lost" in caplog.text
    await monitor.aclose()


async def test_a_panel_seen_off_during_a_play_is_recorded_off(
    signing_recorder: tuple[Journal, DeviceKey], tmp_path: Path
) -> None:
    journal, key = signing_recorder
    folder = connector(tmp_path / "drm", "card0-HDMI-A-1", "connected", "On")
    monitor = PanelMonitor(DrmPanel(tmp_path / "drm"))
    recorder = recorder_for(journal, key, monitor)
    lit = await recorder.start(content(expected_ms=1000))
    await eventually(_async(lambda: monitor.latest is not None), 10, "the start's reading")
    assert (await lit.end()).panel_state == "on"

    dark = await recorder.start(content(expected_ms=1000))
    await eventually(_async(lambda: monitor.last_state == "on"), 10, "the start's reading")
    (folder / "dpms").write_text("Off\n")

    async def read_off() -> bool:
        # The screenshot moment (or the poller). A reading already under way when the
        # panel went off may still say `on`: the next one sees it.
        return (await monitor.observe()).state == "off"

    await eventually(read_off, 10, "a reading after the panel went off")
    record = await dark.end()
    assert record.panel_state == "off" and record.panel_source == "drm"
    await monitor.aclose()


def _async(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


# --- the player agent -------------------------------------------------------------


def test_player_signs_its_plays_with_the_drm_panel_state_once_registered(
    service: Service, data_dir: Path, tmp_path: Path
) -> None:
    token = provision(service.db_url, "scr-1")
    connector(tmp_path / "drm", "card0-HDMI-A-1", "connected", "On")
    # Plays long enough for the key to register right after one starts (none due to end).
    playlist = write_playlist(tmp_path / "p.json", [item(2500)])
    args = [
        *("--server", service.url, "--token", token, "--device-id", "scr-1"),
        *("--store-id", "store-1", "--data-dir", str(data_dir), "--playlist", str(playlist)),
        *("--no-screenshots", "--panel", "drm", "--panel-drm-root", str(tmp_path / "drm")),
    ]
    player = PlayerProcess(*args)
    try:
        player.wait_for("sealing version 2")
        started = [line for line in player.lines if "play started seq=" in line]
        last = int(started[-1].split("seq=")[1].split()[0]) if started else 0
        player.wait_for(f"play ended seq={last + 2}")
        assert player.terminate() == 0, player.log()
    finally:
        player.ensure_dead()
    assert (data_dir / "device.key").exists()
    rows = impressions(service.db_url, "scr-1")
    signed = [r for r in rows if r["key_id"] is not None]
    assert signed, "plays after the registration are signed"
    states = {(r["panel_source"], r["panel_state"]) for r in signed}
    # A reading not done when a play needs it counts as `unknown` (panel.py: never delay a
    # play); on a loaded machine one may be late. The panel's `on` must come through.
    assert ("drm", "on") in states and states <= {("drm", "on"), ("drm", "unknown")}, states
    assert all(r["panel_state"] is None for r in rows if r["key_id"] is None)
    assert query(service.db_url, "SELECT count(*) FROM rejects") == [(0,)]


def test_player_refuses_an_unknown_panel_source_in_one_line(tmp_path: Path) -> None:
    playlist = write_playlist(tmp_path / "p.json", [item(400)])
    player = PlayerProcess(
        *("--server", "http://127.0.0.1:9", "--token", "t", "--device-id", "scr-1"),
        *("--store-id", "store-1", "--data-dir", str(tmp_path / "d"), "--playlist", str(playlist)),
        *("--panel", "hdmi"),
    )
    try:
        assert player.wait() == 1
    finally:
        player.ensure_dead()
    assert "expected --panel among drm, cec, mdc, none" in player.log()
    assert not (tmp_path / "d").exists(), "refused before anything was written"


async def test_device_health_shows_the_panel_source_and_its_last_state(
    tmp_path: Path,
) -> None:
    connector(tmp_path / "drm", "card0-HDMI-A-1", "connected", "Standby")
    options = PanelConfig(drm_root=tmp_path / "drm", drm_connector="HDMI-A-1")
    config = device_config(tmp_path / "device", panel="drm", panel_options=options)
    device = await Device.open(config, capture=None)
    try:
        play = await device.start(content(expected_ms=1000))
        read = _async(lambda: device.health()["panel_state"] is not None)
        await eventually(read, 10, "a reading")
        await play.end()
        status = await device.status()
        assert (status["panel_source"], status["panel_state"]) == ("drm", "standby")
        assert status["key_state"] == "unregistered" and len(status["key_id"]) == 16
    finally:
        await device.close(flush_timeout_s=0)
