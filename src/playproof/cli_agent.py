"""`playproof agent`: the device SDK behind a local HTTP API for players in any language."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from playproof import cli_panel
from playproof.cli_common import DeviceIdOption, ServerOption, StoreIdOption, TokenOption, fail
from playproof.errors import PlayproofError


@cli_panel.with_panel_options
def agent(
    server: ServerOption,
    token: TokenOption,
    device_id: DeviceIdOption,
    store_id: StoreIdOption,
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", help="Data folder (journal, screenshots, agent.token)."),
    ],
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to answer players on (loopback).")
    ] = "127.0.0.1:8788",
    allow_origin: Annotated[
        list[str] | None,
        typer.Option("--allow-origin", help="A kiosk page's origin allowed to call (repeatable)."),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a --listen address beyond loopback.")
    ] = False,
    session: Annotated[
        bool,
        typer.Option(help="Let pages on allowed origins fetch the token (POST /session)."),
    ] = True,
    grace: Annotated[
        float,
        typer.Option(help="Seconds past twice its expected length before a play is ended."),
    ] = 30.0,
    screenshots: Annotated[
        str | None,
        typer.Option(
            help="screen (grab the screen at 40-60 %), player (handed in only) or none; "
            "default: screen when a display exists, else player."
        ),
    ] = None,
    ntp: Annotated[
        list[str] | None, typer.Option("--ntp", help="NTP server host:port (repeatable).")
    ] = None,
    signing: Annotated[
        bool, typer.Option(help="Sign plays (v2) with the key in --data-dir once registered.")
    ] = True,
    panel: cli_panel.PanelOptions = cli_panel.DEFAULTS,
    checkpoint_interval: Annotated[
        float, typer.Option(help="Seconds between checkpoints of a play under way.")
    ] = 5.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the device SDK to a local player: POST /plays, POST /plays/<id>/end."""
    import os

    from playproof.device import DeviceConfig, UplinkConfig
    from playproof.device.agent import AgentSettings, run_agent

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    mode = screenshots or ("screen" if os.environ.get("DISPLAY") else "player")
    if mode not in ("screen", "player", "none"):
        raise fail(f"expected --screenshots screen, player or none, got {mode!r}")
    try:
        panel_options = cli_panel.panel_config(panel)
        config = DeviceConfig(
            device_id=device_id,
            store_id=store_id,
            data_dir=data_dir,
            uplink=UplinkConfig(server_url=server, token=token),
            ntp_servers=tuple(ntp or ()),
            checkpoint_s=checkpoint_interval,
            signing=signing,
            panel=panel.panel,
            panel_options=panel_options,
        )
        settings = AgentSettings(
            listen=listen,
            allow_origins=tuple(allow_origin or ()),
            allow_remote=allow_remote,
            session=session,
            grace_s=grace,
            screenshots=mode,  # type: ignore[arg-type]  # checked just above
        )
        asyncio.run(run_agent(config, settings))
    except PlayproofError as exc:
        raise fail(str(exc)) from None
