"""The baseline's storage: SQLAlchemy ORM models on SQLite (WAL, synchronous=FULL)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Integer, String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of the baseline's tables."""


class Device(Base):
    """A device and its bearer token (stored as is: the naive way)."""

    __tablename__ = "devices"

    token: Mapped[str] = mapped_column(String, primary_key=True)
    device_id: Mapped[str] = mapped_column(String, unique=True)


class Impression(Base):
    """One stored record, keyed by (device_id, journal_id, seq)."""

    __tablename__ = "impressions"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    journal_id: Mapped[str] = mapped_column(String, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    v: Mapped[int] = mapped_column(Integer)
    campaign_id: Mapped[str] = mapped_column(String)
    ad_group_id: Mapped[str] = mapped_column(String)
    content_id: Mapped[str] = mapped_column(String)
    store_id: Mapped[str] = mapped_column(String)
    supplier_id: Mapped[str] = mapped_column(String)
    start_ts: Mapped[int] = mapped_column(Integer)
    end_ts: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    expected_ms: Mapped[int] = mapped_column(Integer)
    end_reason: Mapped[str] = mapped_column(String)
    clock_offset_ms: Mapped[int] = mapped_column(Integer)
    clock_synced: Mapped[bool]
    screenshot_sha256: Mapped[str | None] = mapped_column(String, nullable=True)
    screenshot_at_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checksum: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)
    received_at: Mapped[int] = mapped_column(Integer)


def _on_connect(dbapi_conn: Any, record: Any) -> None:
    # Same durability as playproof; pysqlite's own transaction handling is
    # switched off so that `_on_begin` can take the write lock up front.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


def _on_begin(conn: Any) -> None:
    # SQLAlchemy's documented recipe for concurrent writers on SQLite: without
    # it a read-then-write transaction fails with "database is locked".
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(path: Path) -> Engine:
    """An engine on the SQLite file, with the tables created."""
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False}
    )
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    Base.metadata.create_all(engine)
    return engine


def make_sessions(path: Path) -> sessionmaker[Session]:
    """A session factory on the SQLite file."""
    return sessionmaker(make_engine(path), expire_on_commit=False)


def provision(path: Path, device_ids: list[str]) -> dict[str, str]:
    """Register devices and return their tokens by device id."""
    tokens = {device_id: secrets.token_urlsafe(24) for device_id in device_ids}
    engine = make_engine(path)
    with Session(engine) as session, session.begin():
        session.add_all(Device(token=t, device_id=d) for d, t in tokens.items())
    engine.dispose()
    return tokens
