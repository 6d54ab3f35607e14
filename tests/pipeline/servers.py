"""NATS servers of our own (Debian's `nats-server`), for tests that kill them.

A `NatsServer` runs `nats-server -js` on free loopback ports with its
JetStream store in a temp dir; `kill()` is SIGKILL, `start()` again recovers
from the same store. `NatsCluster` is three of them routed into one
JetStream cluster.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import nats
import pytest

from tests.support import IN_CI, free_port

NATS_SERVER = (
    os.environ.get("PLAYPROOF_NATS_SERVER")
    or shutil.which("nats-server")
    or ("/usr/sbin/nats-server")
)


def require_nats_server() -> None:
    """Fail (CI) or skip (elsewhere) unless the `nats-server` binary is installed."""
    if Path(NATS_SERVER).exists() or shutil.which(NATS_SERVER):
        return
    reason = f"no nats-server binary at {NATS_SERVER} (Debian package nats-server)"
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


class NatsServer:
    """One nats-server process with JetStream, on free loopback ports."""

    def __init__(self, root: Path, name: str = "n1", cluster: list[int] | None = None) -> None:
        self.root = root
        self.name = name
        self.port = free_port()
        self.cluster_port = free_port() if cluster is not None else None
        self.routes = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        (root / name).mkdir(parents=True, exist_ok=True)

    @property
    def host(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def config(self) -> str:
        """The server's configuration file text."""
        text = (
            f'server_name: "{self.name}"\nlisten: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.root / self.name}" }}\n'
        )
        if self.routes is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            text += (
                f'cluster {{ name: "ppc", listen: "127.0.0.1:{self.cluster_port}", '
                f"routes: [{routes}] }}\n"
            )
        return text

    def start(self) -> None:
        """Start (or restart, recovering its store) and wait until clients connect."""
        conf = self.root / f"{self.name}.conf"
        conf.write_text(self.config())
        log = (self.root / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
        )
        deadline = time.monotonic() + 20
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} did not start: {self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        """The end of the server's log."""
        path = self.root / f"{self.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _jetstream_ready(hosts: list[str]) -> None:
    nc = await nats.connect([f"nats://{h}" for h in hosts], connect_timeout=2)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


def wait_jetstream(hosts: list[str], timeout: float = 60) -> None:
    """Block until JetStream answers (a cluster has elected its meta leader)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(_jetstream_ready(hosts))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


class NatsCluster:
    """Three nats-servers routed into one JetStream cluster."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pp-nats-"))
        ports = [free_port() for _ in range(size)]
        self.nodes = [NatsServer(self.root, f"n{i + 1}", cluster=ports) for i in range(size)]
        for node, port in zip(self.nodes, ports, strict=True):
            node.cluster_port = port

    @property
    def hosts(self) -> str:
        """host:port,host:port,... for a jetstream:// URL."""
        return ",".join(n.host for n in self.nodes)

    def start(self) -> None:
        """Start every node and wait for JetStream."""
        for node in self.nodes:
            node.start()
        wait_jetstream([n.host for n in self.nodes])

    def destroy(self) -> None:
        """Kill every node and remove their stores."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
