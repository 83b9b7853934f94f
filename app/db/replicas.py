"""Replica rows and their lifecycle transitions, each one recorded as a timestamped event."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from app.db.schema import Device, ModelVersion, Replica, ReplicaEvent, utcnow
from app.errors import UnknownReplica
from app.lifecycle import HOLDS_MEMORY, TERMINAL, ReplicaState, check_transition


def get(session: Session, replica_id: int, *, lock: bool = False) -> Replica:
    stmt = (
        select(Replica).where(Replica.id == replica_id).options(joinedload(Replica.version), joinedload(Replica.device))
    )
    if lock:
        stmt = stmt.with_for_update(of=Replica)
    replica = session.scalars(stmt).first()
    if replica is None:
        raise UnknownReplica(f"replica {replica_id} does not exist")
    return replica


def create(session: Session, version_id: int, device_id: int, reason: str = "", requested_by: str = "") -> Replica:
    replica = Replica(
        version_id=version_id,
        device_id=device_id,
        state=ReplicaState.PENDING.value,
        reason=reason,
        requested_by=requested_by,
    )
    session.add(replica)
    session.flush()
    session.add(
        ReplicaEvent(
            replica_id=replica.id,
            from_state=None,
            to_state=ReplicaState.PENDING.value,
            reason=reason,
            requested_by=requested_by,
        )
    )
    return replica


def transition(
    session: Session, replica: Replica, dst: ReplicaState, reason: str = "", requested_by: str | None = None
) -> ReplicaState:
    """Move ``replica`` to ``dst`` (raises IllegalTransition) and record the event; returns the old state.

    The event is attributed to ``requested_by`` when given (which also becomes the replica's), else to whoever
    asked for what the replica is doing (its ``requested_by``: a worker's transitions carry out someone's order)."""
    if requested_by is not None:
        replica.requested_by = requested_by
    src = ReplicaState(replica.state)
    check_transition(src, dst, replica=str(replica.id))
    replica.state = dst.value
    replica.updated_at = utcnow()
    if reason or dst is ReplicaState.FAILED:
        replica.reason = reason
    session.add(
        ReplicaEvent(
            replica_id=replica.id,
            from_state=src.value,
            to_state=dst.value,
            reason=reason,
            requested_by=replica.requested_by or "",
        )
    )
    return src


def live_on_device(session: Session, device_id: int) -> list[Replica]:
    """Replicas on a device that are not yet STOPPED or FAILED."""
    stmt = (
        select(Replica)
        .where(Replica.device_id == device_id, Replica.state.not_in([s.value for s in TERMINAL]))
        .options(joinedload(Replica.version))
        .order_by(Replica.id)
    )
    return list(session.scalars(stmt))


def find_live(session: Session, version_id: int, device_id: int) -> Replica | None:
    stmt = select(Replica).where(
        Replica.version_id == version_id,
        Replica.device_id == device_id,
        Replica.state.in_([s.value for s in HOLDS_MEMORY]),
    )
    return session.scalars(stmt.order_by(Replica.id.desc())).first()


def live_for_model(session: Session, model_id: int) -> list[Replica]:
    stmt = (
        select(Replica)
        .join(ModelVersion, Replica.version_id == ModelVersion.id)
        .where(ModelVersion.model_id == model_id, Replica.state.not_in([s.value for s in TERMINAL]))
        .options(joinedload(Replica.device), joinedload(Replica.version))
        .order_by(Replica.id)
    )
    return list(session.scalars(stmt))


def all_with_devices(session: Session, include_terminal: bool = False) -> list[Replica]:
    stmt = select(Replica).options(joinedload(Replica.device), joinedload(Replica.version)).order_by(Replica.id)
    if not include_terminal:
        stmt = stmt.where(Replica.state.not_in([s.value for s in TERMINAL]))
    return list(session.scalars(stmt))


def fail_all_on_device(session: Session, device: Device, reason: str, requested_by: str = "recovery") -> list[Replica]:
    failed = live_on_device(session, device.id)
    for replica in failed:
        transition(session, replica, ReplicaState.FAILED, reason, requested_by=requested_by)
    return failed


def measured_footprints(session: Session) -> dict[int, int]:
    """The largest footprint measured on any loaded replica, per version id."""
    found: dict[int, int] = {}
    rows = session.execute(
        select(Replica.version_id, Replica.footprint_bytes).where(Replica.footprint_bytes.is_not(None))
    ).all()
    for version_id, footprint in rows:
        found[version_id] = max(found.get(version_id, 0), footprint or 0)
    return found


def held_bytes(replica: Replica, measured: dict[int, int]) -> int:
    """Memory a live replica holds or is about to hold: its own measurement, its version's, else declared."""
    return replica.footprint_bytes or measured.get(replica.version_id) or replica.version.mem_bytes


def need_bytes(session: Session, version: ModelVersion) -> int:
    """What a new replica of ``version`` is expected to take: measured when known, else declared.

    Placement by hand and the allocator use this same figure, so they never disagree about what fits.
    """
    return measured_footprints(session).get(version.id) or version.mem_bytes


def summary(r: Replica) -> dict[str, Any]:
    """A replica as the client, the CLI and the worker's task results show it."""
    return {
        "replica": r.id,
        "model": r.version.model.name,
        "version": r.version.version,
        "worker": r.device.worker_name,
        "device_kind": r.device.kind,
        "state": r.state,
        "reason": r.reason,
        "footprint_bytes": r.footprint_bytes,
        "kv_cache_bytes": r.kv_cache_bytes,
        "updated_at": r.updated_at.isoformat(),
    }
