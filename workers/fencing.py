"""Fencing: a worker the fleet declared lost while it was cut off must not keep serving what has been replaced.

A partition does not kill a worker. Cut off, it keeps its models in memory and its consumers open; meanwhile the
reaper marks it lost, fails its replicas, gives its held requests back, bumps its device row's epoch and writes
that epoch to Redis (``app.broker.holdings.declare_lost``), and the allocator places replacements elsewhere. When
the link returns, the worker's epoch (the one it registered with) is older than the fleet's, and that is the
fence it cannot pass:

- its next request: the hold record (``holdings.hold``) reads the fence in the same round trip; the worker then
  reconciles before serving anything and gives the request back to the queue for a replica the fleet owns;
- its next heartbeat: the row's epoch is not its own, so the row is not touched (a lost device does not come back
  ONLINE by itself) and the worker asks itself to reconcile (a ``maas.reconcile`` task on its control queue, run in
  the task thread like every load and unload, so no runtime is released under a running request);
- any replica transition (``workers.lifecycle``) checks the epoch too and raises :class:`~app.errors.Fenced`.

Reconciling: every model held in memory whose replica the database no longer lists as live on this device is
dropped (its queue cancelled, its runtime released); then the worker registers again, which gives it a new
epoch past the fence and an ONLINE row with no replicas, so the allocator may use it afresh.
"""

from __future__ import annotations

import logging
from typing import Any

from app import logs
from app.broker.layout import model_queue
from app.db import devices, replicas
from app.db.session import session_scope
from workers.context import WorkerContext

log = logging.getLogger("maas.worker")


def is_fenced(ctx: WorkerContext, lost_at: int | None) -> bool:
    """Whether the epoch the fleet declared this worker lost at (None: never) fences this life."""
    return lost_at is not None and lost_at >= ctx.epoch


def reconcile(ctx: WorkerContext, reason: str, fenced_at: int | None = None) -> dict[str, Any]:
    """Drop what the database no longer says this worker holds, then register again. Task thread only.

    ``fenced_at``: the epoch the fence says this worker was declared lost at; a new life is registered whenever it
    is this one's, even if the row's epoch happens to equal it (a reap and a restart that raced)."""
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        live = {r.id for r in replicas.live_on_device(session, ctx.device_id)}
    dropped = []
    for loaded in ctx.cache.all():
        if loaded.replica_id in live:
            continue
        ctx.cache.pop(loaded.model, loaded.version)
        if not ctx.cache.versions_of(loaded.model):
            ctx.unsubscribe(model_queue(loaded.model))
        try:
            loaded.runtime.unload()
        except Exception as exc:  # memory comes back at exit anyway; the replica is already FAILED
            logs.event(log, "release_failed", logging.ERROR, exc_info=exc, replica=loaded.replica_id)
        dropped.append(loaded.replica_id)
    old = ctx.epoch
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        row = devices.by_worker(session, ctx.worker_name)
        if row is not None and (row.epoch != ctx.epoch or is_fenced(ctx, fenced_at)):
            ctx.epoch = devices.register(session, ctx.worker_name, ctx.settings.host, ctx.device).epoch
    logs.event(
        log,
        "worker_reconciled",
        logging.WARNING,
        worker=ctx.worker_name,
        dropped_replicas=dropped,
        kept_replicas=sorted(live),
        from_epoch=old,
        to_epoch=ctx.epoch,
        reason=reason,
    )
    return {"worker": ctx.worker_name, "dropped": dropped, "epoch": ctx.epoch}
