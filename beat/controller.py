"""``maas controller``: a worker with no device that runs only the tasks beat sends (``maas.system``).

Why a process of its own: a serving worker runs one task at a time (solo pool, see ``workers.main``), so every
aging pass, allocation solve or recovery sweep it takes holds its models' requests for that long. Measured on the
scheduling benchmark, an aging pass every 0.25 s on the one serving worker cost it several percent of its
capacity, at a load where a few percent doubles the waits. With a controller running, start the serving workers
with ``MAAS_WORKER_SYSTEM_TASKS=false``; without one, serving workers run these tasks themselves (the default),
so a fleet of ``maas worker`` and ``maas beat`` alone still works.

It holds no model and consumes no model queue, so the allocator's consumer reconciliation leaves it alone.
Several controllers may run: each task is taken by one of them, and the allocation pass holds its own lock.
"""

from __future__ import annotations

import logging

from celery import signals

from app import logs
from app.broker import heartbeats
from app.broker.layout import SYSTEM_QUEUE
from app.celery_app import create_app, solo_worker_argv
from app.db.migrate import ensure_current
from app.settings import Settings
from beat.tasks import register

log = logging.getLogger("maas.controller")


def run(settings: Settings, loglevel: str | None = None) -> None:
    logs.configure(loglevel or settings.log_level, settings.log_format)
    # Every task here is beat's periodic work (an aging pass every second): its "received" and "succeeded" lines
    # only show at DEBUG. What the tasks do that matters (a reap, a resend, a move) is logged by the tasks.
    logs.quiet(loglevel or settings.log_level, "celery.worker.strategy", "celery.app.trace")
    ensure_current(settings.sqlalchemy_url)
    name = settings.worker_name or f"controller@{settings.host}"
    app = create_app(settings)
    register(app)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kw: object) -> None:
        heartbeats.Stamper(settings.redis_url, name, settings.heartbeat_s, settings.redis_sentinel_master).start()
        logs.event(log, "controller_ready", worker=name, queue=SYSTEM_QUEUE)

    app.worker_main(solo_worker_argv(name, [SYSTEM_QUEUE], loglevel or settings.log_level))
