"""The boundary with NATS JetStream: connection, streams, consumers; nats errors become ours.

One stream per partition (`<name>_<p>`, subject `<name>.<p>`): partitions are
the unit of JetStream placement (each stream has its own leader, spread over
the cluster) and of the loaders' work. Streams keep messages by age
(`retention`), replicate them (`replicas`) and drop a message whose
Nats-Msg-Id was seen within the `window`, answering with the original's
sequence: that answer is how ingest nodes tell duplicates (see `sink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from playproof.errors import ConfigError, StoreError, StoreUnavailable
from playproof.pipeline.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
PING_S: Final = 2.0
CONNECT_S: Final = 5.0
MAX_PENDING_PUBLISHES: Final = 65_536
_DESCRIPTION = re.compile(r"^playproof pipeline partition (\d+) of (\d+)$")
NATS_ERRORS: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)
# (partition, payload, Nats-Msg-Id or None)
Message = tuple[int, bytes, str | None]


def translate(exc: BaseException, doing: str) -> StoreError:
    """A nats error as ours: anything transient is StoreUnavailable (answer 503, retry)."""
    if isinstance(exc, nats.js.errors.BadRequestError | nats.errors.MaxPayloadError):
        return StoreError(f"JetStream refused to {doing}: {exc}")
    what = str(exc) or type(exc).__name__
    return StoreUnavailable(f"JetStream cannot {doing} now: {what}")


@contextlib.asynccontextmanager
async def translated(doing: str) -> AsyncIterator[None]:
    """Translate nats errors raised in the block."""
    try:
        yield
    except NATS_ERRORS as exc:
        raise translate(exc, doing) from exc


async def bounded(awaitable: Awaitable[T], seconds: float, doing: str) -> T:
    """`awaitable` within `seconds`, nats errors and timeouts translated."""
    async with translated(doing):
        return await asyncio.wait_for(awaitable, seconds)


def stream_config(settings: Settings, partition: int) -> api.StreamConfig:
    """The configuration of one partition's stream."""
    return api.StreamConfig(
        name=settings.stream(partition),
        description=f"playproof pipeline partition {partition} of {settings.partitions}",
        subjects=[settings.subject(partition)],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=settings.retention_ms / 1000,
        duplicate_window=settings.window_ms / 1000,
        storage=api.StorageType.FILE,
        num_replicas=settings.replicas,
    )


def consumer_config(settings: Settings) -> api.ConsumerConfig:
    """The loaders' durable pull consumer on each partition stream.

    Every message is acknowledged on its own (explicit acks): loaders share the
    consumer, and a loader's fetch may return fewer messages than the batch,
    leaving room for another loader's fetch. An ack-all by one loader would then
    acknowledge messages another has not committed yet, and lose them if that
    one died. At most one batch is unacknowledged per partition, so a partition
    is mostly loaded by one loader at a time, in stream order; what a dead
    loader held goes to the next one after `ack_wait`.
    """
    return api.ConsumerConfig(
        durable_name=settings.durable,
        description="playproof loaders",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_ms / 1000,
        max_ack_pending=settings.batch,
        max_deliver=-1,
        max_waiting=512,
    )


class JetStream:
    """A connection to the JetStream servers of one deployment."""

    def __init__(self, settings: Settings, nc: Client) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(publish_async_max_pending=MAX_PENDING_PUBLISHES)
        self._timeout = settings.timeout_ms / 1000

    @classmethod
    async def connect(cls, settings: Settings, role: str) -> JetStream:
        """Connect (StoreUnavailable when no server answers); reconnect forever afterwards."""

        async def on_error(exc: Exception) -> None:
            # Failed reconnects repeat every second; the disconnect itself was logged.
            level = logging.DEBUG if isinstance(exc, OSError) else logging.WARNING
            log.log(level, "JetStream connection (%s): %s", role, exc)

        async def on_disconnect() -> None:
            if not nc.is_closed:
                log.warning("JetStream disconnected (%s); reconnecting", role)

        async def on_reconnect() -> None:
            log.warning("JetStream reconnected (%s) to %s", role, nc.connected_url)

        nc = Client()
        connecting = nc.connect(
            servers=list(settings.servers),
            name=f"playproof-{role}",
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        try:
            # Reconnects go on forever once connected; the first connection may not.
            await bounded(connecting, CONNECT_S, f"connect to {settings.url}")
        except BaseException:
            with contextlib.suppress(*NATS_ERRORS):
                await nc.close()
            raise
        return cls(settings, nc)

    async def close(self) -> None:
        """Close the connection (what was published has been acknowledged already)."""
        with contextlib.suppress(*NATS_ERRORS):
            await self.nc.close()

    def require_connected(self, doing: str) -> None:
        """StoreUnavailable at once while the connection is down (rather than after a timeout)."""
        if not self.nc.is_connected:
            raise StoreUnavailable(f"JetStream cannot {doing} now: not connected to any server")

    # --- streams -------------------------------------------------------------

    async def ensure_streams(self) -> None:
        """Create the partition streams that are missing; ConfigError on a partition mismatch."""
        for partition in range(self.settings.partitions):
            await self._ensure_stream(stream_config(self.settings, partition))

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        name = str(config.name)
        async with translated(f"create stream {name}"):
            try:
                info = await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                with contextlib.suppress(nats.js.errors.BadRequestError):
                    await self.js.add_stream(config)  # a concurrent starter may win: fine
                info = await self.js.stream_info(name)
        self._check_partitions(name, info.config.description or "")
        if (info.config.num_replicas or 1) != config.num_replicas:
            log.warning(
                "stream %s: replicas %s -> %s", name, info.config.num_replicas, config.num_replicas
            )
            async with translated(f"update stream {name}"):
                await self.js.update_stream(config)

    def _check_partitions(self, name: str, description: str) -> None:
        found = _DESCRIPTION.fullmatch(description)
        if found is None or int(found.group(2)) != self.settings.partitions:
            raise ConfigError(
                f"expected stream {name} to be one of {self.settings.partitions} partitions, "
                f"found {description!r}: every node and loader of a deployment must use the "
                f"same partitions (a device's records must always land in one partition)"
            )

    async def ping(self) -> None:
        """StoreUnavailable unless every partition stream answers now."""
        self.require_connected("answer a ping")
        names = [self.settings.stream(p) for p in range(self.settings.partitions)]
        infos = asyncio.gather(*(self.js.stream_info(n) for n in names))
        await bounded(infos, PING_S, "answer a ping")

    # --- messages ------------------------------------------------------------

    async def publish(
        self, partition: int, payload: bytes, msg_id: str | None = None
    ) -> asyncio.Future[api.PubAck]:
        """Send one message; the future resolves with JetStream's ack (see `publish_many`)."""
        self.require_connected("store records")
        headers = {"Nats-Msg-Id": msg_id} if msg_id is not None else None
        async with translated("store records"):
            return await self.js.publish_async(
                self.settings.subject(partition), payload, headers=headers
            )

    async def publish_many(self, messages: Sequence[Message]) -> list[api.PubAck]:
        """Send messages pipelined; JetStream's acks, in order, all within the timeout.

        Whatever fails, no ack is left waiting: each pending one holds a slot of
        nats-py's pending-publish limit, and leaked slots would wedge the node.
        """
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for partition, payload, msg_id in messages:
                futures.append(await self.publish(partition, payload, msg_id))
            return await bounded(asyncio.gather(*futures), self._timeout, "store records")
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()

    async def publish_one(
        self, partition: int, payload: bytes, msg_id: str | None = None
    ) -> api.PubAck:
        """Send one message and wait for JetStream's ack."""
        [ack] = await self.publish_many([(partition, payload, msg_id)])
        return ack

    async def get(self, partition: int, seq: int) -> bytes:
        """The payload of one stored message, read from the stream's leader."""
        doing = f"read message {seq} of {self.settings.stream(partition)}"
        found = await bounded(
            self.js.get_msg(self.settings.stream(partition), seq=seq), self._timeout, doing
        )
        if found.data is None:
            raise StoreError(f"JetStream answered message {seq} without a payload")
        return bytes(found.data)

    # --- the loaders' consumers ------------------------------------------------

    async def pull(self, partition: int) -> JetStreamContext.PullSubscription:
        """A pull subscription on the loaders' durable consumer of one partition."""
        stream = self.settings.stream(partition)
        async with translated(f"create the loaders' consumer on {stream}"):
            await self._ensure_consumer(stream)
            return await self.js.pull_subscribe_bind(durable=self.settings.durable, stream=stream)

    async def _ensure_consumer(self, stream: str) -> None:
        config = consumer_config(self.settings)
        try:
            await self.js.consumer_info(stream, self.settings.durable)
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await self.js.add_consumer(stream, config)

    async def consumer_state(self, partition: int) -> dict[str, Any]:
        """Pending and unacknowledged counts of one partition's loaders' consumer."""
        stream = self.settings.stream(partition)
        async with translated(f"read the loaders' consumer on {stream}"):
            try:
                info = await self.js.consumer_info(stream, self.settings.durable)
            except nats.js.errors.NotFoundError:
                # No loader has started yet: everything in the stream is still to load.
                state = (await self.js.stream_info(stream)).state
                return {"pending": state.messages, "ack_pending": 0}
        return {"pending": info.num_pending, "ack_pending": info.num_ack_pending}

    async def delete_streams(self) -> None:
        """Delete every partition stream (tests and benchmarks clean up with this)."""
        for partition in range(self.settings.partitions):
            async with translated("delete a stream"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.js.delete_stream(self.settings.stream(partition))
