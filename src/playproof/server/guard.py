"""Failed authentications per client address, limited before any database work.

A token the cache does not know costs a store read; a flood of random tokens
would cost one each. So failures (a missing, malformed, unknown or revoked
token) are counted per client address in a token bucket, and once an address
has spent its bucket, a token the cache does not know is refused 429 (stream:
close 1013) without asking the store. Only failures are counted: a whole shop
of screens behind one NAT address, authenticating correctly, is never limited,
and a known token (a cache hit) works whatever its address did.

The client address is the peer's, unless the peer is a configured trusted proxy:
then it is the nearest address in `X-Forwarded-For` that is not one. An IPv6
client counts as its /64, the block one subscriber usually holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from ipaddress import IPv6Address, ip_address, ip_network

from starlette.requests import HTTPConnection

from playproof.config import proxy_networks
from playproof.errors import Forbidden, RateLimited, Unauthenticated
from playproof.server.auth import BeforeLookup
from playproof.server.limits import RateLimiter

UNKNOWN = "unknown"


class AuthGuard:
    """Counts failed authentications per client address and refuses lookups past the limit."""

    def __init__(
        self,
        failures: int,
        rate: float,
        trusted_proxies: str = "",
        on_lookup: Callable[[], None] | None = None,
    ) -> None:
        self._failures = RateLimiter(rate, failures)
        self._rate = rate
        self._trusted = proxy_networks(trusted_proxies)
        self._on_lookup = on_lookup

    def client(self, conn: HTTPConnection) -> str:
        """The address a request or stream comes from, as the failures are counted by."""
        peer = conn.client.host if conn.client else UNKNOWN
        if self._trusted and self._is_trusted(peer):
            peer = self._forwarded_for(conn.headers.get("x-forwarded-for"), peer)
        return _key(peer)

    @contextlib.contextmanager
    def watch(self, client: str) -> Iterator[BeforeLookup]:
        """Count an authentication failing in the block against `client`.

        Yields the check to run before a token is looked up in the store.
        """
        try:
            yield lambda: self._before_lookup(client)
        except (Unauthenticated, Forbidden):
            self._failures.spend(client)
            raise

    def _before_lookup(self, client: str) -> None:
        wait = self._failures.wait(client)
        if wait > 0:
            raise RateLimited(
                f"too many failed authentications from {client}: expected at most "
                f"{self._rate:g} a second after a burst; retry after {wait:.0f} s",
                wait,
            )
        if self._on_lookup is not None:
            self._on_lookup()

    def _forwarded_for(self, header: str | None, peer: str) -> str:
        # Walk from the nearest hop: each trusted proxy appended the address it saw.
        hops = [h.strip() for h in (header or "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not _is_address(hop):
                return peer  # a proxy that writes garbage: count it against the proxy
            if not self._is_trusted(hop):
                return hop
            peer = hop
        return peer

    def _is_trusted(self, address: str) -> bool:
        if not _is_address(address):
            return False
        found = ip_address(address)
        return any(found in net for net in self._trusted)


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _key(address: str) -> str:
    try:
        found = ip_address(address)
    except ValueError:
        return address
    if isinstance(found, IPv6Address):
        if found.ipv4_mapped is not None:
            return str(found.ipv4_mapped)
        return str(ip_network(f"{found}/64", strict=False))
    return str(found)
