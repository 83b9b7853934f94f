"""Celery control: the one module that tells workers what to hold and what to consume.

Everything that sends a lifecycle message (load, drain, unload) to a worker's control queue, asks beat's tasks
to run now, or calls ``app.control`` (add / cancel a consumer, inspect the queues a worker consumes) goes through
here. The producer client wraps these orders in handles to wait on; the allocator carries out its moves with
them; a worker uses :meth:`Control.send_unload` to follow its own drain.

Every order names the replica it is about, so nobody has to look it up again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from sqlalchemy.orm import Session

from app import placement, registry, signing
from app.broker.layout import CONTROL_PRIORITY, SYSTEM_QUEUE, control_queue, is_model_queue
from app.celery_app import settings_of
from app.db import devices as device_rows
from app.db import replicas
from app.db.schema import Replica
from app.db.session import session_scope
from app.errors import StopRefused
from app.lifecycle import HOLDS_MEMORY, ReplicaState

#: How long ``inspect`` waits for workers' replies before it counts the silent ones out.
INSPECT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class LoadOrder:
    """A load sent to ``worker`` for ``replica_id``; ``sent`` is None when the replica was READY already."""

    replica_id: int
    worker: str
    sent: AsyncResult | None
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class StopOrder:
    """A drain sent to ``worker`` for ``replica_id``, which the worker follows with ``unload``."""

    replica_id: int
    worker: str
    drain: AsyncResult
    unload: AsyncResult


def device_views(session: Session, heartbeat_timeout_s: float) -> list[placement.DeviceView]:
    """Every registered device with the memory its live replicas hold, for placement."""
    used: dict[int, int] = {}
    measured = replicas.measured_footprints(session)
    for r in replicas.all_with_devices(session):
        if ReplicaState(r.state) in HOLDS_MEMORY:
            used[r.device_id] = used.get(r.device_id, 0) + replicas.held_bytes(r, measured)
    return [
        placement.DeviceView(
            d.worker_name,
            d.index,
            d.label,
            d.mem_bytes,
            used.get(d.id, 0),
            device_rows.is_alive(d, heartbeat_timeout_s),
        )
        for d in device_rows.all_devices(session)
    ]


class Control:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self.settings = settings_of(app)

    # --- lifecycle orders ---------------------------------------------------------------------------------------
    def load(
        self,
        ref: str,
        *,
        worker: str | None = None,
        device: int | None = None,
        reason: str = "",
        requested_by: str = "",
    ) -> LoadOrder:
        """Place a replica of ``ref`` (on a named worker or device, else the one with most free memory), load it.

        A replica already live there is reused: READY is returned as is, one still loading is sent the load again
        (load is idempotent on the worker).
        """
        with session_scope(self.settings.sqlalchemy_url) as session:
            version = registry.resolve(session, ref)
            views = device_views(session, self.settings.heartbeat_timeout_s)
            existing = self._existing(session, version.id, worker, device, views)
            if existing is not None and existing.state == ReplicaState.READY.value:
                return LoadOrder(existing.id, existing.device.worker_name, None, replicas.summary(existing))
            if existing is None:
                target = placement.choose_device(
                    views, replicas.need_bytes(session, version), worker=worker, device=device
                )
                dev = device_rows.by_worker(session, target.worker_name)
                assert dev is not None  # choose_device only returns registered devices
                existing = replicas.create(
                    session, version.id, dev.id, reason=reason or f"load {version.ref}", requested_by=requested_by
                )
            replica_id, worker_name = existing.id, existing.device.worker_name
        return LoadOrder(replica_id, worker_name, self.send_load(replica_id, worker_name))

    @staticmethod
    def _existing(
        session: Session,
        version_id: int,
        worker: str | None,
        device: int | None,
        views: list[placement.DeviceView],
    ) -> Replica | None:
        for view in views:
            if (worker and view.worker_name != worker) or (device is not None and view.index != device):
                continue
            dev = device_rows.by_worker(session, view.worker_name)
            found = replicas.find_live(session, version_id, dev.id) if view.alive and dev is not None else None
            if found is not None and (worker or device is not None or found.state == ReplicaState.READY.value):
                return found
        return None

    def stop(self, ref: str, *, worker: str | None = None, requested_by: str = "") -> list[StopOrder]:
        """Drain and unload the live replicas of ``ref`` (all of them, or the one on ``worker``)."""
        parsed = registry.parse_ref(ref)
        with session_scope(self.settings.sqlalchemy_url) as session:
            model = registry.get_model(session, parsed.model)
            explicit = parsed.version is not None or parsed.alias is not None
            version_id = registry.resolve(session, parsed).id if explicit else None
            live = replicas.live_for_model(session, model.id)
            targets = [
                (r.id, r.device.worker_name)
                for r in live
                if (version_id is None or r.version_id == version_id)
                and (worker is None or r.device.worker_name == worker)
            ]
            floor = max(model.min_replicas, 1 if model.keep_warm else 0)
            if targets and len(live) - len(targets) < floor:
                # The allocator would load it again at its next run (keep-warm and min_replicas are a floor it
                # restores): say so now instead of stopping what comes back a few seconds later.
                why = [
                    w
                    for w, on in (
                        ("keep-warm is on", model.keep_warm),
                        (f"min_replicas is {model.min_replicas}", model.min_replicas > 0),
                    )
                    if on
                ]
                flags = " ".join(
                    f
                    for f, on in (("--keep-warm off", model.keep_warm), ("--min-replicas 0", model.min_replicas > 0))
                    if on
                )
                raise StopRefused(
                    f"{model.name}: {' and '.join(why)}, so the allocator would load it again; not stopped. "
                    f"Run `maas model set {model.name} {flags}` first"
                )
            for r in live:
                if any(r.id == replica_id for replica_id, _ in targets):
                    r.requested_by = requested_by  # the worker's DRAINING..STOPPED events are this stop's
        return [self.send_stop(replica_id, worker_name) for replica_id, worker_name in targets]

    # --- the messages ---------------------------------------------------------------------------------------------
    def send_load(self, replica_id: int, worker: str) -> AsyncResult:
        return self._send(worker, "maas.load", [replica_id])

    def send_stop(self, replica_id: int, worker: str) -> StopOrder:
        """Drain, then unload: the worker sends the unload itself (under the id given here) once it has drained."""
        unload_id = str(uuid.uuid4())
        drain = self._send(worker, "maas.drain", [replica_id, unload_id])
        return StopOrder(replica_id, worker, drain, AsyncResult(unload_id, app=self.app))

    def send_unload(self, replica_id: int, worker: str, task_id: str | None = None) -> AsyncResult:
        return self._send(worker, "maas.unload", [replica_id], task_id=task_id)

    def send_reconcile(self, worker: str, reason: str) -> AsyncResult:
        """Ask ``worker`` to drop what the database says it no longer holds (see workers.fencing)."""
        return self._send(worker, "maas.reconcile", [reason])

    def request_allocation(self) -> None:
        """Ask for an allocation run now rather than at the next period (scale from zero)."""
        self.app.send_task("maas.allocate", queue=SYSTEM_QUEUE, priority=CONTROL_PRIORITY)

    def _send(self, worker: str, task: str, args: list[Any], task_id: str | None = None) -> AsyncResult:
        # Signed under the fleet key (app.signing), so a worker can tell its fleet's orders from forged ones.
        task_id = task_id or str(uuid.uuid4())
        headers: dict[str, Any] = {}
        if self.settings.signing_key:
            headers[signing.FIELD] = signing.control_signature(self.settings.signing_key, task, task_id, args, {})
        else:
            signing.warn_unsigned("producer")
        return self.app.send_task(
            task, args=args, queue=control_queue(worker), priority=CONTROL_PRIORITY, task_id=task_id, headers=headers
        )

    # --- consumers ------------------------------------------------------------------------------------------------
    def model_queues_consumed(self, timeout_s: float = INSPECT_TIMEOUT_S) -> dict[str, set[str]]:
        """worker -> the model queues it consumes now, for every worker that answered within ``timeout_s``."""
        replies = self.app.control.inspect(timeout=timeout_s).active_queues() or {}
        return {worker: {q["name"] for q in queues if is_model_queue(q["name"])} for worker, queues in replies.items()}

    def add_consumer(self, worker: str, queue: str) -> None:
        self.app.control.add_consumer(queue, destination=[worker], reply=False)

    def cancel_consumer(self, worker: str, queue: str) -> None:
        self.app.control.cancel_consumer(queue, destination=[worker], reply=False)
