"""Load, drain and unload of replicas on this worker, recording every transition in the database.

Ordering rules (make-before-break is the caller's; these are the worker's): a model's queue is consumed only once
the replica is READY, and consumption stops (DRAINING) before the runtime is released (UNLOADING).
Every operation is idempotent: a redelivered or repeated message finds the state already reached and returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from app import logs, outage
from app.artifacts import LocalArtifactStore
from app.broker.layout import model_queue
from app.db import replicas
from app.db.session import session_scope
from app.errors import Fenced, LoadFailed, MaasError, UnknownReplica
from app.lifecycle import TERMINAL, ReplicaState
from app.settings import Settings
from app.signature import parse_signature
from workers import runtimes
from workers.cache import Loaded
from workers.context import WorkerContext
from workers.footprint import used_bytes

log = logging.getLogger("maas.worker")
S = ReplicaState
T = TypeVar("T")
#: Characters of an unexpected exception's message kept in the replica's reason; the log holds the traceback.
REASON_CHARS = 1000


def _with_database(ctx: WorkerContext, fn: Callable[[], T], what: str) -> T:
    """``fn()``, retried with backoff while the database is away, for up to ``MAAS_WORKER_DB_RETRY_S``.

    A worker keeps serving what it holds through a database outage; the lifecycle records it writes meanwhile wait
    for the database (this task holds the solo pool meanwhile) rather than being dropped. Past the limit the error
    is DATABASE_UNAVAILABLE.
    """
    limit_s = ctx.settings.worker_db_retry_s
    return outage.retrying(fn, what, attempts=outage.attempts_within(limit_s), max_s=limit_s)


def _move(ctx: WorkerContext, replica_id: int, dst: ReplicaState, reason: str = "", **updates: Any) -> dict:
    def write() -> tuple[ReplicaState, dict]:
        with session_scope(ctx.settings.sqlalchemy_url) as session:
            replica = replicas.get(session, replica_id, lock=True)
            if replica.device.epoch != ctx.epoch:
                raise Fenced(
                    f"{ctx.worker_name} (epoch {ctx.epoch}) may not move replica {replica_id}: the device is at "
                    f"epoch {replica.device.epoch} (declared lost since); it reconciles first"
                )
            src = replicas.transition(session, replica, dst, reason)
            for key, value in updates.items():
                setattr(replica, key, value)
            return src, replicas.summary(replica)

    src, info = _with_database(ctx, write, f"recording replica {replica_id} {dst.value}")
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
    return _with_database(ctx, lambda: _read_once(ctx, replica_id), f"reading replica {replica_id}")


def _read_once(ctx: WorkerContext, replica_id: int) -> tuple[ReplicaState, dict[str, Any], dict[str, Any]]:
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
            "max_request_bytes": v.model.max_request_bytes or ctx.settings.max_request_bytes,
            "max_result_bytes": v.model.max_result_bytes or ctx.settings.max_result_bytes,
            "size_bytes": v.size_bytes,
            "mem_bytes": v.mem_bytes,
        }
        return ReplicaState(replica.state), replicas.summary(replica), spec


def load(ctx: WorkerContext, replica_id: int) -> dict[str, Any]:
    """Load the replica's version into this worker and start consuming its queue.

    Any failure moves the replica to FAILED with the reason, so nothing is left LOADING: a MaasError is re-raised as
    it is, anything else (an OSError, an NVML or driver error) is logged with its traceback and raised as LoadFailed
    with the original chained as its cause.
    """
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
    try:
        loaded = _load_runtime(ctx, replica_id, model, version, spec)
        ctx.cache.put(loaded)
        where = f"on {loaded.runtime.device_label}"
        kv = loaded.kv_cache_bytes or None
        info = _move(ctx, replica_id, S.READY, where, footprint_bytes=loaded.footprint_bytes, kv_cache_bytes=kv)
        ctx.subscribe(model_queue(model))
    except Exception as exc:
        error = _load_failed(ctx, replica_id, model, version, exc)
        if error is exc:
            raise
        raise error from exc
    return info


def _load_runtime(ctx: WorkerContext, replica_id: int, model: str, version: int, spec: dict[str, Any]) -> Loaded:
    """Fetch and check the artifact, build the runtime on this worker's device, and measure what it took."""
    store = LocalArtifactStore(ctx.settings.artifact_dir, ctx.settings.max_artifact_bytes)
    path = store.fetch(spec["uri"], spec["sha256"])
    runtime = runtimes.create(spec["runtime"])
    before = used_bytes(ctx.device.kind, ctx.device.index)
    runtime.load(path, use_gpu=ctx.device.kind == "gpu")
    measured = used_bytes(ctx.device.kind, ctx.device.index) - before
    footprint = plausible_footprint(measured, spec["size_bytes"], spec["mem_bytes"])
    if footprint != measured:
        logs.event(
            log,
            "footprint_implausible",
            logging.WARNING,
            replica=replica_id,
            model=model,
            version=version,
            worker=ctx.worker_name,
            measured_bytes=measured,
            artifact_bytes=spec["size_bytes"],
            recorded_bytes=footprint,
            reason="measured less than the artifact's size (memory the process held already, or freed meanwhile)",
        )
    kv = generative_reserve_bytes(runtime, ctx.settings)
    return Loaded(
        replica_id,
        model,
        version,
        runtime,
        parse_signature(spec["inputs"]),
        footprint + kv,
        spec["max_batch_size"],
        spec["max_queue_delay_s"],
        spec["max_request_bytes"],
        spec["max_result_bytes"],
        kv,
    )


def generative_reserve_bytes(runtime: Any, settings: Settings) -> int:
    """The KV cache a generative replica may grow to (0 for other runtimes), counted in its footprint.

    Loading a causal LM allocates only its weights; its cache grows with every sequence in flight, up to the
    engine's limits. A footprint without it would let the allocator fill the device with replicas whose caches
    then cannot grow: the cache is reserved here, in the figure placement reads, instead."""
    if not getattr(runtime, "generative", False):
        return 0
    return int(runtime.kv_reserve_bytes(settings.generation_max_sequences, settings.generation_kv_bytes))


def plausible_footprint(measured: int, size_bytes: int, declared_bytes: int) -> int:
    """The footprint to record: the measured one, unless it is below the artifact's own size, which no runtime can
    hold a model in (ONNX Runtime already loaded in the process, or another replica's release in between, makes the
    difference read 0 MiB). Then the declared footprint (at least the artifact's size) is recorded instead."""
    if measured >= size_bytes:
        return measured
    return max(declared_bytes, size_bytes)


def _load_failed(ctx: WorkerContext, replica_id: int, model: str, version: int, exc: Exception) -> MaasError:
    """Record a failed load (FAILED with the reason, the runtime released) and return the error to raise."""
    reason = str(exc) if isinstance(exc, MaasError) else f"{type(exc).__name__}: {exc}"[:REASON_CHARS]
    where = {"replica": replica_id, "model": model, "version": version, "worker": ctx.worker_name, "reason": reason}
    if isinstance(exc, MaasError):
        error = exc
    else:
        logs.event(log, "load_failed", logging.ERROR, exc_info=exc, **where)
        error = LoadFailed(f"loading {model}:{version} on {ctx.worker_name} failed: {reason}")
    held = ctx.cache.get(model, version)
    if held is not None and held.replica_id == replica_id:
        # Failed after the runtime was built (READY could not be written, or the queue not subscribed).
        ctx.cache.pop(model, version)
        _release(held)
    try:
        _move(ctx, replica_id, S.FAILED, reason)
    except Exception as move_exc:  # the database is down too, or the replica already ended: still raise the error
        logs.event(log, "load_failure_unrecorded", logging.ERROR, exc_info=move_exc, **where)
    return error


def _release(loaded: Loaded) -> None:
    try:
        loaded.runtime.unload()
    except Exception as exc:  # the load already failed; this only frees memory early, the process exit frees it too
        logs.event(log, "release_failed", logging.ERROR, exc_info=exc, replica=loaded.replica_id, model=loaded.model)


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
