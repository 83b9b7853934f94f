"""The relational schema (SQLAlchemy 2 declarative). Alembic migrations in ``app/migrations`` must match it.

Works on PostgreSQL (production) and SQLite (the embedded default). JSON columns hold signatures; timestamps are
stored in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.lifecycle import ReplicaState


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """A named model; what applications call. Its versions are immutable."""

    __tablename__ = "model"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    versions: Mapped[list[ModelVersion]] = relationship(back_populates="model", order_by="ModelVersion.version")


class ModelVersion(Base):
    """One immutable build of a model: its artifact, checksum, runtime, signature and declared resources."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    runtime: Mapped[str] = mapped_column(String(40))
    inputs: Mapped[list[Any]] = mapped_column(JSON)
    outputs: Mapped[list[Any]] = mapped_column(JSON)
    mem_bytes: Mapped[int] = mapped_column(BigInteger)  # declared footprint, used until one is measured
    service_ms: Mapped[float] = mapped_column(Float, default=1.0)  # declared time per request, cold start
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model: Mapped[Model] = relationship(back_populates="versions")

    @property
    def ref(self) -> str:
        return f"{self.model.name}:{self.version}"


class ModelAlias(Base):
    """A movable name for a version (``prod`` -> version 3)."""

    __tablename__ = "model_alias"
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    version: Mapped[ModelVersion] = relationship()


class Device(Base):
    """A device a worker is pinned to: a real GPU from NVML, or a declared virtual device."""

    __tablename__ = "device"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_name: Mapped[str] = mapped_column(String(200), unique=True)  # Celery node name, e.g. gpu0@host
    host: Mapped[str] = mapped_column(String(200))
    index: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # gpu | virtual
    mem_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default="online")  # online | offline | lost
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def label(self) -> str:
        tag = " (virtual)" if self.kind == "virtual" else ""
        return f"{self.worker_name} [{self.name}{tag}]"


class Replica(Base):
    """A model version held (or being loaded, or once held) by one worker on one device."""

    __tablename__ = "replica"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id"), index=True)
    state: Mapped[str] = mapped_column(String(20), default=ReplicaState.PENDING.value, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    footprint_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # measured at load
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[ModelVersion] = relationship()
    device: Mapped[Device] = relationship()
    events: Mapped[list[ReplicaEvent]] = relationship(back_populates="replica", order_by="ReplicaEvent.id")


class ReplicaEvent(Base):
    """One timestamped lifecycle transition of a replica."""

    __tablename__ = "replica_event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replica: Mapped[Replica] = relationship(back_populates="events")
