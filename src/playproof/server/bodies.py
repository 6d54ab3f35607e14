"""Reading request bodies within limits: content type, gzip, and a bound on the size.

The decompressed size is bounded while decompressing, so that a gzip bomb costs
at most the limit in memory and gets 413, never an out-of-memory.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

from starlette.requests import Request

from playproof.errors import BodyTimeout, EnvelopeError, TooLarge, UnsupportedMedia


def require_content_type(request: Request, allowed: tuple[str, ...]) -> str:
    """The request's media type if it is one of `allowed`, else UnsupportedMedia."""
    header = request.headers.get("content-type", "")
    media = header.split(";", 1)[0].strip().lower()
    if media not in allowed:
        got = repr(header) if header else "none"
        raise UnsupportedMedia(f"expected Content-Type {' or '.join(allowed)}, got {got}")
    return media


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise EnvelopeError(f"expected a numeric Content-Length, got {value!r}") from None


async def _collect(chunks: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise TooLarge(f"expected a {what} of at most {limit} bytes, got more")
    return bytes(buf)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing output past `limit` bytes and truncated input."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise EnvelopeError(f"expected a gzip body, got undecodable data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"expected at most {limit} bytes once decompressed, got more")
    if not inflater.eof:
        raise EnvelopeError("expected a complete gzip stream, got a truncated one")
    if inflater.unused_data:
        raise EnvelopeError("expected one gzip member, got trailing data after it")
    return out


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body, decompressed if gzip, at most `limit` bytes either way, within `timeout_s`."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMedia(f"expected Content-Encoding gzip or identity, got {encoding!r}")
    declared = _declared_length(request)
    # A compressed body is smaller than its content, except for incompressible
    # data, where gzip adds a few bytes per 16 KiB block.
    wire_limit = limit if encoding == "identity" else limit + limit // 64 + 1024
    if declared is not None and declared > wire_limit:
        raise TooLarge(f"expected a body of at most {wire_limit} bytes, got {declared}")
    try:
        async with asyncio.timeout(timeout_s):
            data = await _collect(request.stream(), wire_limit, "body")
    except TimeoutError:
        raise BodyTimeout(f"expected the whole body within {timeout_s:g} s, got less") from None
    return gunzip(data, limit) if encoding == "gzip" else data
