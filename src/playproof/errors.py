"""The exception tree: every error playproof raises on purpose is one of these.

This module is a leaf: it imports nothing of ours, so every layer, `protocol`
included, can raise from it. Third-party errors are translated into these at
the boundary where they occur; messages say what was expected and what came.
"""

from __future__ import annotations


class PlayproofError(Exception):
    """Base of every error playproof raises on purpose."""


class ConfigError(PlayproofError):
    """A configuration value, file or variable is not what it must be."""


class ProtocolError(PlayproofError):
    """Input does not follow the wire protocol."""


class EnvelopeError(ProtocolError):
    """A body or frame is not a well-formed envelope (HTTP 400)."""


class RecordError(ProtocolError):
    """One record is malformed; it is rejected as `invalid`, the batch goes on."""


class CatalogError(ProtocolError):
    """A catalog document or import is wrong; the message names the entry and the field."""


class KeyRefused(ProtocolError):
    """A public key or key id that may not be registered (HTTP 400), with the reason."""


class TooLarge(ProtocolError):
    """A body is over the batch limits (HTTP 413)."""


class BodyTimeout(ProtocolError):
    """A body did not arrive within the time allowed (HTTP 408)."""


class UnsupportedMedia(ProtocolError):
    """A body has a content type or encoding the service does not take (HTTP 415)."""


class AuthError(PlayproofError):
    """The caller may not do this."""


class Unauthenticated(AuthError):
    """Missing or unknown token (HTTP 401, stream close 4401)."""


class Forbidden(AuthError):
    """Revoked token, or data for another device (HTTP 403, stream close 4403)."""


class RateLimited(AuthError):
    """Too many requests from one caller (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(PlayproofError):
    """The service holds all it may now; nothing was acknowledged (HTTP 503, retry later)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(PlayproofError):
    """The thing asked for does not exist."""


class Conflict(PlayproofError):
    """The thing to create exists already."""


class StoreError(PlayproofError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The store cannot commit now; nothing was acknowledged (HTTP 503)."""


class StoreDataError(StoreError):
    """The store refused the values it was given (a constraint, a number out of range).

    The committer retries such a commit batch by batch, then record by record;
    a record that fails alone with one is rejected as `invalid`, the error kept.
    """


class SchemaMismatch(StoreError):
    """The database schema is newer than this code, or otherwise unusable."""


class DeviceError(PlayproofError):
    """The device side (journal, clock, uplink, player) cannot go on as asked."""


class JournalError(DeviceError):
    """The device journal is missing, unwritable or corrupt."""
