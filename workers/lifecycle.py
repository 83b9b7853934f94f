"""Load, drain and unload of replicas on this worker, recording every transition in the database.

Ordering rules (make-before-break is the caller's; these are the worker's): a model's queue is consumed only once
the replica is READY, and consumption stops (DRAINING) before the runtime is released (UNLOADING).
Every operation is idempotent: a redelivered or repeated message finds the state already reached and returns.
"""

from __future__ import annotations

import logging
from typing import Any

from app import logs
from app.artifacts import LocalArtifactStore
from app.broker.layout import model_queue
from app.db import replicas
from app.db.session import session_scope
from app.errors import MaasError, UnknownReplica
from app.lifecycle import TERMINAL, ReplicaState
from app.signature import parse_signature
from workers import runtimes
from workers.cache import Loaded
from workers.context import WorkerContext
from workers.footprint import used_bytes

log = logging.getLogger("maas.worker")
S = ReplicaState


def _move(ctx: WorkerContext, replica_id: int, dst: ReplicaState, reason: str = "", **updates: Any) -> dict:
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        replica = replicas.get(session, replica_id, lock=True)
        src = replicas.transition(session, replica, dst, reason)
        for key, value in updates.items():
            setattr(replica, key, value)
        info = replicas.summary(replica)
    level = logging.WARNING if dst is S.FAILED else logging.INFO
    logs.event(
        log,
        "replica_transition",
        level,
        replica=replica_id,
        model=info["model"],
        version=info["version"],
        worker=ctx.worker_name,
        from_state=src.value,
        to_state=dst.value,
        reason=reason,
    )
    return info


def _read(ctx: WorkerContext, replica_id: int) -> tuple[ReplicaState, dict[str, Any], dict[str, Any]]:
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        replica = replicas.get(session, replica_id)
        if replica.device_id != ctx.device_id:
            raise UnknownReplica(f"replica {replica_id} belongs to {replica.device.worker_name}, not {ctx.worker_name}")
        v = replica.version
        spec = {
            "uri": v.artifact_uri,
            "sha256": v.sha256,
            "runtime": v.runtime,
            "inputs": v.inputs,
            "max_batch_size": v.model.max_batch_size,
            "max_queue_delay_s": v.model.max_queue_delay_ms / 1000,
        }
        return ReplicaState(replica.state), replicas.summary(replica), spec


def load(ctx: WorkerContext, replica_id: int) -> dict[str, Any]:
    state, info, spec = _read(ctx, replica_id)
    model, version = info["model"], info["version"]
    if state is S.READY and ctx.cache.get(model, version) is not None:
        return info  # already loaded: a second load is a no-op
    if state is S.READY:
        return _move(ctx, replica_id, S.FAILED, "READY in the database but not held in memory by this worker")
    if state in TERMINAL or state in (S.DRAINING, S.UNLOADING):
        return info
    if state is S.PENDING:
        _move(ctx, replica_id, S.LOADING)
    store = LocalArtifactStore(ctx.settings.artifact_dir, ctx.settings.max_artifact_bytes)
    try:
        path = store.fetch(spec["uri"], spec["sha256"])
        runtime = runtimes.create(spec["runtime"])
        before = used_bytes(ctx.device.kind, ctx.device.index)
        runtime.load(path, use_gpu=ctx.device.kind == "gpu")
        footprint = max(0, used_bytes(ctx.device.kind, ctx.device.index) - before)
    except MaasError as exc:
        _move(ctx, replica_id, S.FAILED, str(exc))
        raise
    ctx.cache.put(
        Loaded(
            replica_id,
            model,
            version,
            runtime,
            parse_signature(spec["inputs"]),
            footprint,
            spec["max_batch_size"],
            spec["max_queue_delay_s"],
        )
    )
    info = _move(ctx, replica_id, S.READY, f"on {runtime.device_label}", footprint_bytes=footprint)
    ctx.subscribe(model_queue(model))
    return info


def drain(ctx: WorkerContext, replica_id: int) -> tuple[dict[str, Any], bool]:
    """Stop consuming the model's queue; returns (summary, whether an unload must follow)."""
    state, info, _ = _read(ctx, replica_id)
    if state is S.PENDING:
        return _move(ctx, replica_id, S.STOPPED, "stopped before it was loaded"), False
    if state in TERMINAL:
        return info, False
    if state is S.READY:
        info = _move(ctx, replica_id, S.DRAINING)
    model, version = info["model"], info["version"]
    if not [v for v in ctx.cache.versions_of(model) if v != version]:
        ctx.unsubscribe(model_queue(model))
    return info, True


def unload(ctx: WorkerContext, replica_id: int) -> dict[str, Any]:
    state, info, _ = _read(ctx, replica_id)
    if state is S.DRAINING:
        _move(ctx, replica_id, S.UNLOADING)
    elif state is not S.UNLOADING:
        return info
    loaded = ctx.cache.pop(info["model"], info["version"])
    freed = 0
    if loaded is not None:
        before = used_bytes(ctx.device.kind, ctx.device.index)
        loaded.runtime.unload()
        del loaded
        freed = max(0, before - used_bytes(ctx.device.kind, ctx.device.index))
    return _move(ctx, replica_id, S.STOPPED, f"released, {freed} bytes returned")
