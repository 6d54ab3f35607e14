"""Listening addresses: HOST:PORT parsed, and a socket bound to one.

Shared by the service (`serve`, `--metrics-listen`) and the device's local agent
(`playproof agent --listen`), which must not import each other.
"""

from __future__ import annotations

import socket

from playproof.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def parse_listen(address: str) -> tuple[str, int]:
    """HOST:PORT (or [V6HOST]:PORT) as a host and a port; ConfigError if it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected HOST:PORT, e.g. 10.0.0.5:9787, got {address!r}")
    return host, int(port)
