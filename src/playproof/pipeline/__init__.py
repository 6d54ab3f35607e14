"""The path past one machine: ingest nodes publish to NATS JetStream, loaders fill the store.

`playproof serve --pipeline jetstream://...` judges as before and commits into
a `JetStreamSink` (`sink`); `playproof load --pipeline ... --db ...` runs a
`Loader` (`loader`) that batches the stream into the store. Both read their
shared settings from the one URL (`settings`). See docs/pipeline.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from playproof.protocol import Ack
from playproof.rules import DEFAULT_POLICY, Policy
from playproof.stores.base import BatchWrite


class Pipeline(Protocol):
    """A sink in front of the store that the service opens, pings and closes with it."""

    url: str
    kind: str
    commit_lanes: int

    async def open(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the pipeline can take records now."""

    async def commit(self, writes: Sequence[BatchWrite]) -> list[list[Ack]]:
        """Make the batches durable in the pipeline; each batch's acks, in order."""


def open_pipeline(url: str, policy: Policy = DEFAULT_POLICY) -> Pipeline:
    """The pipeline a URL names (not yet opened): `jetstream://host:port[,...]?settings`."""
    from playproof.pipeline.settings import parse
    from playproof.pipeline.sink import JetStreamSink

    return JetStreamSink(parse(url), policy)


async def prepare(url: str) -> None:
    """Reach the JetStream servers a URL names and create the partition streams that are missing."""
    from playproof.pipeline.jetstream import JetStream
    from playproof.pipeline.settings import parse

    js = await JetStream.connect(parse(url), "setup")
    try:
        await js.ensure_streams()
    finally:
        await js.close()
