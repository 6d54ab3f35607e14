"""The panel options `playproof player` and `playproof agent` share (`--panel` and its source's
settings), and the one place they become a checked `PanelConfig`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple, TypeVar, get_type_hints

import typer

from playproof.config import (
    PANEL_CEC_DEVICE,
    PANEL_DRM_ROOT,
    PANEL_MDC_ID,
    PANEL_MDC_PORT,
    PANEL_TIMEOUT_S,
)

if TYPE_CHECKING:
    from playproof.device.panel import PanelConfig

R = TypeVar("R")

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


class PanelOptions(NamedTuple):
    """The `--panel*` options as given, in the order `--help` lists them: each field is one
    option (its name the parameter's), with its type, help and default."""

    panel: Panel = "none"
    panel_drm_connector: DrmConnector = None
    panel_drm_root: DrmRoot = PANEL_DRM_ROOT
    panel_cec_device: CecDevice = PANEL_CEC_DEVICE
    panel_mdc_host: MdcHost = None
    panel_mdc_port: MdcPort = PANEL_MDC_PORT
    panel_mdc_id: MdcId = PANEL_MDC_ID
    panel_mdc_pin: MdcPin = None
    panel_timeout: Timeout = PANEL_TIMEOUT_S


DEFAULTS: Final = PanelOptions()


def with_panel_options(command: Callable[..., R]) -> Callable[..., R]:
    """`command` with its `PanelOptions` parameter spelled out as the `--panel*` options, in
    its place: typer has no groups of options, and the commands that share these must not
    each repeat nine of them (or their defaults)."""
    signature = inspect.signature(command, eval_str=True)
    (grouped,) = (p for p in signature.parameters.values() if p.annotation is PanelOptions)
    hints = get_type_hints(PanelOptions, include_extras=True)
    spelled = [
        grouped.replace(name=name, annotation=hints[name], default=default)
        for name, default in PanelOptions._field_defaults.items()
    ]
    parameters = list(signature.parameters.values())
    at = parameters.index(grouped)
    parameters[at : at + 1] = spelled

    @functools.wraps(command)
    def gathered(*args: Any, **given: Any) -> R:
        options = {name: given.pop(name) for name in PanelOptions._fields if name in given}
        return command(*args, **given, **{grouped.name: PanelOptions(**options)})

    # typer reads both: the signature for the options, the annotations for their types.
    gathered.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    gathered.__annotations__ = {p.name: p.annotation for p in parameters} | {
        "return": signature.return_annotation
    }
    return gathered


def panel_config(given: PanelOptions) -> PanelConfig:
    """The settings, checked by making the source once: a bad `--panel` or a missing
    setting is one line (ConfigError) before anything is written."""
    from playproof.device.panel import PanelConfig, make_source

    options = PanelConfig(
        timeout_s=given.panel_timeout,
        drm_root=given.panel_drm_root,
        drm_connector=given.panel_drm_connector,
        cec_device=given.panel_cec_device,
        mdc_host=given.panel_mdc_host,
        mdc_port=given.panel_mdc_port,
        mdc_id=given.panel_mdc_id,
        mdc_pin=given.panel_mdc_pin,
    )
    make_source(given.panel, options)
    return options
