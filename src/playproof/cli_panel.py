"""The panel options `playproof player` and `playproof agent` share (`--panel` and its source's
settings), and the one place they become a checked `PanelConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from playproof.device.panel import PanelConfig

Panel = Annotated[str, typer.Option("--panel", help="Panel state source: drm, cec, mdc or none.")]
DrmConnector = Annotated[
    str | None, typer.Option(help="DRM connector, e.g. HDMI-A-1 (default: any).")
]
DrmRoot = Annotated[Path, typer.Option(help="Where the DRM connectors are (sysfs).")]
CecDevice = Annotated[str, typer.Option(help="CEC device for cec-ctl.")]
MdcHost = Annotated[str | None, typer.Option(help="Samsung MDC display address (--panel mdc).")]
MdcPort = Annotated[int, typer.Option(help="Samsung MDC TCP port.")]
MdcId = Annotated[int, typer.Option(help="Samsung MDC display id (0-255).")]
MdcPin = Annotated[
    str | None,
    typer.Option(envvar="PLAYPROOF_MDC_PIN", help="MDC secured-protocol PIN (TLS); none: plain."),
]
Timeout = Annotated[float, typer.Option(help="Seconds a panel reading may take (late: unknown).")]
DRM_ROOT = Path("/sys/class/drm")


def panel_config(
    panel: str,
    timeout_s: float,
    drm_root: Path,
    drm_connector: str | None,
    cec_device: str,
    mdc: tuple[str | None, int, int, str | None],
) -> PanelConfig:
    """The settings, checked by making the source once: a bad `--panel` or a missing
    setting is one line (ConfigError) before anything is written."""
    from playproof.device.panel import PanelConfig, make_source

    mdc_host, mdc_port, mdc_id, mdc_pin = mdc
    options = PanelConfig(
        timeout_s=timeout_s,
        drm_root=drm_root,
        drm_connector=drm_connector,
        cec_device=cec_device,
        mdc_host=mdc_host,
        mdc_port=mdc_port,
        mdc_id=mdc_id,
        mdc_pin=mdc_pin,
    )
    make_source(panel, options)
    return options
