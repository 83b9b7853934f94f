"""The relational schema (SQLAlchemy 2 declarative). Alembic migrations in ``app/migrations`` must match it.

Works on PostgreSQL (production) and SQLite (the embedded default). JSON columns hold signatures; timestamps are
stored in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.job_states import ChunkState, JobState
from app.lifecycle import DeviceStatus, ReplicaState


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
    # Serving policy, read by the allocator and the scheduler; None means the fleet default.
    policy: Mapped[str | None] = mapped_column(String(10), nullable=True)  # fifo | sjf | srtf | aging
    max_queue: Mapped[int | None] = mapped_column(Integer, nullable=True)  # backlog limit before QUEUE_FULL
    keep_warm: Mapped[bool] = mapped_column(Boolean, default=False)  # keep one replica even when idle
    min_replicas: Mapped[int] = mapped_column(Integer, default=0)
    max_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pinned: Mapped[list[Any]] = mapped_column(JSON, default=list)  # worker names it must be on
    # Dynamic batching, read when a replica loads: up to max_batch_size waiting requests run as one call.
    max_batch_size: Mapped[int] = mapped_column(Integer, default=1)
    max_queue_delay_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # Latency objective: the allocator keeps the model off device classes whose service time exceeds it.
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Size limits in bytes; None: the fleet's MAAS_MAX_REQUEST_BYTES / MAAS_MAX_RESULT_BYTES.
    max_request_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_result_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
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
    status: Mapped[str] = mapped_column(String(20), default=DeviceStatus.ONLINE.value)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    speed: Mapped[float] = mapped_column(Float, default=1.0)  # relative throughput, 1.0 = reference device
    # The worker's life: bumped when it registers and when the reaper marks it lost. A worker whose epoch is no
    # longer the row's (it was cut off and declared lost meanwhile) is fenced: it may not heartbeat, serve or move a
    # replica until it has dropped what it held and registered again (workers.fencing).
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Latest telemetry, written with each heartbeat.
    mem_used_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    util_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

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
    #: Of the footprint, the KV cache a generative replica may grow to (None for the others); the allocator counts
    #: it through footprint_bytes, this says how much of it is cache.
    kv_cache_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: Who asked for what the replica is doing now (its load, or its stop): copied onto each event it makes.
    requested_by: Mapped[str] = mapped_column(String(200), default="", server_default="")
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
    #: Who asked: "user NAME via cli", "user via gateway", "allocation run N", "recovery".
    requested_by: Mapped[str] = mapped_column(String(200), default="", server_default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replica: Mapped[Replica] = relationship(back_populates="events")


class AllocationRun(Base):
    """One re-solve of the fleet's placement: what went in, what came out, and the moves it made."""

    __tablename__ = "allocation_run"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(30))  # planned | executing | done | failed | dry_run | kept
    reason: Mapped[str] = mapped_column(Text, default="")
    solver: Mapped[str] = mapped_column(String(40), default="")
    solver_status: Mapped[str] = mapped_column(String(40), default="")
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    bound: Mapped[float | None] = mapped_column(Float, nullable=True)
    gap: Mapped[float | None] = mapped_column(Float, nullable=True)
    solve_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # summary: models, devices, demand
    moves: Mapped[list[Any]] = mapped_column(JSON, default=list)  # each: kind, model, worker, after, state


class Job(Base):
    """A chunked batch job: many inputs for one model, served chunk by chunk (SRTF overtakes at chunk edges)."""

    __tablename__ = "job"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_class: Mapped[str] = mapped_column(String(20), default="batch")
    status: Mapped[str] = mapped_column(String(20), default=JobState.RUNNING.value)
    total_chunks: Mapped[int] = mapped_column(Integer)
    chunk_service_s: Mapped[float] = mapped_column(Float, default=0.0)  # estimate per chunk at submission
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    chunks: Mapped[list[JobChunk]] = relationship(back_populates="job", order_by="JobChunk.index")


class JobChunk(Base):
    """One chunk of a job: its inputs, state, attempts, and result or error."""

    __tablename__ = "job_chunk"
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default=ChunkState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    inputs: Mapped[list[Any]] = mapped_column(JSON)
    outputs: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[str] = mapped_column(String(200), default="")
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    job: Mapped[Job] = relationship(back_populates="chunks")
