"""The Celery application shared by producers, workers, beat and Flower.

Everything that must agree between them (serialiser, priority steps, separator, visibility timeout) is set here,
once, from :class:`~app.settings.Settings`. Why each option is what it is: docs/architecture.md, section 12
("Celery, kombu and Redis facts the code relies on"), which gives the public source of each.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.broker.layout import PRIORITY_LEVELS, PRIORITY_SEP, SYSTEM_QUEUE
from app.settings import Settings


def transport_options(settings: Settings) -> dict[str, Any]:
    return {
        "priority_steps": list(PRIORITY_LEVELS),
        "sep": PRIORITY_SEP,
        # Within one level, rotate between queues: "priority" would always serve the first-listed model first and
        # starve the others at the same level. Across levels BRPOP is priority-first whatever this says.
        "queue_order_strategy": "round_robin",
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu sweeps for messages whose visibility timeout passed only every interval x throttle seconds
        # (10 x 10 by default). Sweep at a fifth of the timeout, at most every 10 s, so a message held by a
        # dead worker comes back soon after its timeout instead of up to 100 s later.
        "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout_s / 5))),
        "unacked_restore_throttle": 1,
        # Sentinel: which primary to ask the Sentinels for (ignored by the plain Redis transport).
        **({"master_name": settings.redis_sentinel_master} if settings.uses_sentinel else {}),
    }


FIRST_RESULT_BACKEND = "app.broker.first_result:FirstResultBackend"
FIRST_RESULT_SENTINEL_BACKEND = "app.broker.first_result:FirstResultSentinelBackend"


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    # Results go to the same Redis, through a backend that keeps a task's first answer (app.broker.first_result).
    backend = FIRST_RESULT_SENTINEL_BACKEND if settings.uses_sentinel else FIRST_RESULT_BACKEND
    app = Celery("maas", broker=settings.redis_url, backend=backend, set_as_current=False)
    app.conf.update(
        # JSON only: pickle lets a message run code on the worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_default_priority=settings.default_priority,
        task_default_queue=SYSTEM_QUEUE,
        broker_transport_options=transport_options(settings),
        result_backend_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            **({"master_name": settings.redis_sentinel_master} if settings.uses_sentinel else {}),
        },
        # Ack after the task returns, and give the message back if the worker dies mid-task: nothing accepted is
        # lost. Prefetch 1 so a worker never holds low-priority messages while high-priority ones wait.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        result_expires=int(settings.result_expires_s),
        result_extended=False,
        # Flower needs task events; "sent" lets it show messages still waiting in a queue (for what goes through
        # send_task: infer requests are queued by the admission script, see app/admission.py).
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        beat_schedule_filename=str(settings.home / "beat-schedule"),
        timezone="UTC",
    )
    if settings.uses_sentinel:
        # A failover takes the primary away for a few seconds: a result read or write retries (backing off up to
        # 2 s) while the Sentinels promote the replica, instead of failing the caller or the worker at once.
        app.conf.update(
            result_backend_always_retry=True,
            result_backend_max_retries=30,
            result_backend_base_sleep_between_retries_ms=100,
            result_backend_max_sleep_between_retries_ms=2000,
        )
    app.maas_settings = settings  # type: ignore[attr-defined]
    return app


def settings_of(app: Celery) -> Settings:
    """The settings an app was created with by :func:`create_app`."""
    settings: Settings = app.maas_settings  # type: ignore[attr-defined]
    return settings


def solo_worker_argv(hostname: str, queues: list[str], loglevel: str) -> list[str]:
    """``celery worker`` arguments for one of our processes: solo pool (see workers.main), only ``queues``.

    Gossip and mingle (worker-to-worker state sharing) are off: nothing here uses them.
    """
    return [
        "worker",
        "--hostname",
        hostname,
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--queues",
        ",".join(queues),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
