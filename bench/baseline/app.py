"""The baseline service: FastAPI, a pydantic model per record, one ORM insert per record.

It implements the protocol subset the benchmark exercises: bearer auth, the
checksum, the playback rule, dedupe on (device_id, journal_id, seq) and
per-record acks in order, over HTTP and the WebSocket stream.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions'
# annotations at definition time, and these close over `create_app`'s locals.

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from baseline.db import Device, Impression, make_sessions

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


class ImpressionIn(BaseModel):
    """One record as the device sends it."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    device_id: Id
    journal_id: Id
    seq: int = Field(ge=1)
    campaign_id: Id
    ad_group_id: Id
    content_id: Id
    store_id: Id
    supplier_id: Id
    start_ts: int = Field(ge=0)
    end_ts: int = Field(ge=0)
    duration_ms: int = Field(ge=0)
    expected_ms: int = Field(ge=1)
    end_reason: Literal["completed", "skipped", "interrupted", "error", "device_restart"]
    clock_offset_ms: int
    clock_synced: bool
    screenshot_sha256: str | None
    screenshot_at_ms: int | None
    checksum: str


class EnvelopeIn(BaseModel):
    """A batch as the device sends it."""

    model_config = ConfigDict(extra="forbid")

    device_id: Id
    sent_at: int
    impressions: list[ImpressionIn] = Field(max_length=1000)


class FrameIn(EnvelopeIn):
    """A stream frame: a batch with an id."""

    id: int


class AckOut(BaseModel):
    """One record's ack."""

    seq: int
    result: str
    status: str | None = None
    quality: int | None = None
    flags: list[str] | None = None
    reason: str | None = None


class AckMessageOut(BaseModel):
    """The answer to a batch."""

    received_at: int
    skew_ms: int
    acks: list[AckOut]


class StreamAckOut(AckMessageOut):
    """The answer to a stream frame."""

    id: int


def now_ms() -> int:
    """The service clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def checksum_of(record: ImpressionIn) -> str:
    """SHA-256 of the record's canonical JSON, as PROTOCOL.md section 2 says."""
    canonical = json.dumps(
        record.model_dump(exclude={"checksum"}), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def play_status(record: ImpressionIn) -> str:
    """`valid` when completed and played at least 80 % of the expected length."""
    enough = record.duration_ms >= 0.8 * record.expected_ms
    return "valid" if record.end_reason == "completed" and enough else "partial"


def ack_record(session: Session, record: ImpressionIn, device_id: str, now: int) -> AckOut:
    """Check, dedupe and insert one record; its ack."""
    if record.device_id != device_id:
        return AckOut(seq=record.seq, result="rejected", reason="forbidden")
    if checksum_of(record) != record.checksum:
        return AckOut(seq=record.seq, result="rejected", reason="bad_checksum")
    stored = session.get(Impression, (record.device_id, record.journal_id, record.seq))
    if stored is not None:
        if stored.checksum == record.checksum:
            return AckOut(seq=record.seq, result="duplicate")
        return AckOut(seq=record.seq, result="rejected", reason="conflict")
    status = play_status(record)
    session.add(Impression(**record.model_dump(), status=status, received_at=now))
    return AckOut(seq=record.seq, result="accepted", status=status, quality=100, flags=[])


def ingest(sessions: sessionmaker[Session], envelope: EnvelopeIn, device_id: str) -> AckMessageOut:
    """Ack every record of a batch, committing once at the end."""
    now = now_ms()
    if envelope.device_id != device_id:
        raise HTTPException(403, "envelope for another device")
    with sessions() as session, session.begin():
        acks = [ack_record(session, r, device_id, now) for r in envelope.impressions]
    return AckMessageOut(received_at=now, skew_ms=envelope.sent_at - now, acks=acks)


def device_for(sessions: sessionmaker[Session], authorization: str | None) -> str | None:
    """The device id a bearer token belongs to, or None."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    with sessions() as session:
        device = session.get(Device, authorization.removeprefix("Bearer ").strip())
        return device.device_id if device else None


def create_app(db_path: Path) -> FastAPI:
    """The baseline app on one SQLite file."""
    app = FastAPI(title="baseline ingest")
    sessions = make_sessions(db_path)

    def authenticated(authorization: Annotated[str | None, Header()] = None) -> str:
        device_id = device_for(sessions, authorization)
        if device_id is None:
            raise HTTPException(401, "missing or unknown token")
        return device_id

    @app.post("/v1/impressions/batch", response_model_exclude_none=True)
    def post_batch(
        envelope: EnvelopeIn, device_id: Annotated[str, Depends(authenticated)]
    ) -> AckMessageOut:
        return ingest(sessions, envelope, device_id)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        device_id = await run_in_threadpool(device_for, sessions, ws.headers.get("authorization"))
        if device_id is None:
            await ws.close(4401)
            return
        try:
            while True:
                await ws.send_text(await answer(await ws.receive_text(), device_id))
        except WebSocketDisconnect:
            return

    async def answer(text: str, device_id: str) -> str:
        try:
            frame = FrameIn.model_validate_json(text)
        except ValidationError as exc:
            return json.dumps({"id": None, "error": str(exc)})
        try:
            ack = await run_in_threadpool(ingest, sessions, frame, device_id)
        except HTTPException as exc:
            return json.dumps({"id": frame.id, "error": exc.detail})
        out = StreamAckOut(id=frame.id, **ack.model_dump())
        return out.model_dump_json(exclude_none=True)

    return app


def app_from_env() -> FastAPI:
    """The app on the file named by BASELINE_DB (for `uvicorn --factory`)."""
    return create_app(Path(os.environ["BASELINE_DB"]))
