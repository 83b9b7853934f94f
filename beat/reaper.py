"""Marking workers lost when their heartbeats stop, and failing the replicas they held.

Redis keeps the requests waiting in a model's queue; they are served by any other replica, or by a new one.
"""

from __future__ import annotations

import logging

from app import logs
from app.broker import holdings, keys
from app.broker.clients import for_settings
from app.db import devices, replicas
from app.db.schema import utcnow
from app.db.session import session_scope
from app.lifecycle import DeviceStatus
from app.settings import Settings

log = logging.getLogger("maas.beat")


def reap(settings: Settings) -> list[str]:
    """Mark every online device whose heartbeat is older than the timeout as lost; return their worker names."""
    now = utcnow()
    lost: list[tuple[str, int]] = []
    client = for_settings(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        for device in devices.all_devices(session):
            if device.status != DeviceStatus.ONLINE or devices.is_alive(device, settings.heartbeat_timeout_s, now):
                continue
            if client.exists(keys.alive(device.worker_name)):
                # Its database heartbeats stopped but its Redis ones did not: the database was away (an outage
                # the worker rode out), not the worker. Reaping it would fail replicas that serve.
                continue
            # Locked and read again: a worker registering meanwhile bumps the same epoch (app.db.devices.register).
            session.refresh(device, with_for_update=True)
            if device.status != DeviceStatus.ONLINE or devices.is_alive(device, settings.heartbeat_timeout_s, now):
                continue
            silent_s = (now - devices.as_utc(device.heartbeat_at)).total_seconds()
            reason = f"worker lost: no heartbeat from {device.worker_name} for {silent_s:.0f}s"
            device.status = DeviceStatus.LOST
            # A new epoch: the worker, if it is only cut off, can no longer heartbeat or move a replica as itself.
            device.epoch = (device.epoch or 0) + 1
            for replica in replicas.fail_all_on_device(session, device, reason):
                logs.event(
                    log,
                    "replica_transition",
                    logging.WARNING,
                    replica=replica.id,
                    model=replica.version.model.name,
                    version=replica.version.version,
                    worker=device.worker_name,
                    to_state="FAILED",
                    reason=reason,
                )
            lost.append((device.worker_name, device.epoch))
    for worker, epoch in lost:
        holdings.declare_lost(client, worker, epoch)
        given_back = holdings.give_back(client, worker)
        if given_back:
            logs.event(
                log,
                "requests_given_back",
                logging.WARNING,
                worker=worker,
                task_ids=given_back,
                reason="their worker was lost: requeued now, not after the visibility timeout",
            )
    # Requests a worker took but died before recording (app.broker.holdings.give_back_orphans): every pass, since
    # one taken just before its worker died is only old enough to be sure of a pass or two after the reap. Last,
    # after the lost workers are fenced and their held requests given back, so a failure here costs only itself.
    orphans = holdings.give_back_orphans(client, settings.heartbeat_timeout_s)
    if orphans:
        logs.event(
            log,
            "requests_given_back",
            logging.WARNING,
            task_ids=orphans,
            reason="taken by a worker that died before it recorded them: requeued, not left to the visibility timeout",
        )
    return [worker for worker, _ in lost]
