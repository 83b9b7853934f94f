"""``maas worker --device N``: pin the device, register it, then run a solo-pool Celery worker.

Order matters: the device is pinned (CUDA_VISIBLE_DEVICES) before any module that could initialise CUDA is
imported, and the model cache lives in this one process, so the solo pool is used (prefork would fork after
CUDA is initialised, which CUDA forbids).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery, bootsteps, signals
from celery.worker.consumer import Consumer

from app import logs, signing
from app.broker import holdings
from app.broker.clients import for_settings
from app.broker.layout import SYSTEM_QUEUE, control_queue
from app.celery_app import create_app, solo_worker_argv
from app.control import Control
from app.db import devices, replicas
from app.db.migrate import ensure_current
from app.db.session import session_scope
from app.lifecycle import DeviceStatus
from app.settings import Settings
from workers import context
from workers import devices as device_discovery
from workers.footprint import open_cuda_context
from workers.heartbeat import Heartbeat

log = logging.getLogger("maas.worker")


class _CaptureConsumer(bootsteps.StartStopStep):
    """Hands the Celery consumer to the worker context, so tasks can add and cancel queues on it."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Consumer) -> None:
        ctx = context.current()
        restarted = ctx.consumer is not None
        ctx.consumer = c
        if restarted:
            _give_back_after_reconnect(ctx)


def _give_back_after_reconnect(ctx: context.WorkerContext) -> None:
    """The consumer restarts after losing the broker (a Redis failover, a partition): what this worker held then
    sits in kombu's unacked hash until the visibility timeout, and Celery cancelled it here. Give it back now.

    Solo pool: no request runs while the consumer restarts, so nothing given back is still running here.
    """
    given_back = holdings.give_back(ctx.redis, ctx.worker_name)
    if given_back:
        logs.event(
            log,
            "requests_given_back",
            logging.WARNING,
            worker=ctx.worker_name,
            task_ids=given_back,
            reason="the connection to the broker was lost while this worker held them",
        )


def _take_over_previous_life(settings: Settings, device_id: int, worker_name: str) -> list[int]:
    """Replicas a previous run of this worker held are gone from memory: fail them and plan fresh loads."""
    reason = "worker restarted: its in-memory copy was lost"
    reload_ids = []
    with session_scope(settings.sqlalchemy_url) as session:
        device = devices.by_worker(session, worker_name)
        assert device is not None  # registered just before
        for old in replicas.fail_all_on_device(session, device, reason):
            fresh = replicas.create(
                session, old.version_id, device_id, reason=f"reload of replica {old.id}", requested_by="recovery"
            )
            reload_ids.append(fresh.id)
    return reload_ids


def run(
    settings: Settings,
    device_index: int,
    loglevel: str | None = None,
    extra_tasks: Callable[[Celery], None] | None = None,
) -> None:
    """Start the worker; ``extra_tasks`` registers more tasks (beat's, when this worker consumes the system queue)."""
    logs.configure(loglevel or settings.log_level, settings.log_format)
    if not settings.signing_key:
        signing.warn_unsigned("worker")  # at start, so the warning is in every worker's log
    found = device_discovery.discover(settings)
    device = device_discovery.pick(found, device_index)
    device_discovery.pin(device)
    context_bytes = open_cuda_context(device.index) if device.kind == "gpu" else None
    host = settings.host
    worker_name = settings.worker_name or f"gpu{device.index}@{host}"
    ensure_current(settings.sqlalchemy_url)
    with session_scope(settings.sqlalchemy_url) as session:
        row = devices.register(session, worker_name, host, device)
        device_id, epoch = row.id, row.epoch
    reload_ids = _take_over_previous_life(settings, device_id, worker_name)
    # What a previous life of this worker was running when it died goes back to its queues now.
    given_back = holdings.give_back(for_settings(settings), worker_name)
    if given_back:
        logs.event(
            log,
            "requests_given_back",
            logging.WARNING,
            worker=worker_name,
            task_ids=given_back,
            reason="this worker restarted while running them",
        )
    context.CURRENT = context.WorkerContext(settings, worker_name, device, device_id, epoch=epoch)

    app = create_app(settings)
    # What kombu or Celery cannot read is dead-lettered instead of stopping the worker or vanishing.
    app.conf.worker_consumer = "workers.poison:Consumer"
    if settings.redis_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport = "workers.poison:Transport"
    context.CURRENT.app = app
    from workers.tasks import register

    register(app)
    if extra_tasks is not None:
        extra_tasks(app)
    app.steps["consumer"].add(_CaptureConsumer)
    heartbeat = Heartbeat(context.CURRENT, on_fenced=lambda reason: Control(app).send_reconcile(worker_name, reason))

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kw: object) -> None:
        heartbeat.start()
        control = Control(app)
        for replica_id in reload_ids:
            control.send_load(replica_id, worker_name)
        logs.event(
            log,
            "worker_ready",
            worker=worker_name,
            device=device.name,
            kind=device.kind,
            mem_bytes=device.mem_bytes,
            cuda_context_bytes=context_bytes,
            reloading=reload_ids,
        )

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_kw: object) -> None:
        heartbeat.stop()
        with session_scope(settings.sqlalchemy_url) as session:
            devices.mark(session, worker_name, DeviceStatus.OFFLINE)
        logs.event(log, "worker_stopped", worker=worker_name)

    queues = [control_queue(worker_name), *([SYSTEM_QUEUE] if extra_tasks is not None else [])]
    app.worker_main(solo_worker_argv(worker_name, queues, loglevel or settings.log_level))
