"""The Celery application shared by producers, workers, beat and Flower.

Everything that must agree between them (serialiser, priority steps, separator, visibility timeout) is set here,
once, from :class:`~app.settings.Settings`. Why each option is what it is: docs/architecture.md, section 12
("Celery, kombu and Redis facts the code relies on"), which gives the public source of each.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery

from app.broker.layout import PRIORITY_LEVELS, PRIORITY_SEP, SYSTEM_QUEUE
from app.errors import ConfigError
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
    # Results go to the same Redis, through a backend that signs them (MAAS_SIGNING_KEY, app.signing) and keeps a
    # task's first answer (app.broker.first_result).
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
            # Reconnecting the result channel after Redis went away: a few quick tries, not Celery's 20; a client's
            # wait retries in slices up to its own timeout (app.client.Handle), so nothing waits past it.
            "retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
            **({"master_name": settings.redis_sentinel_master} if settings.uses_sentinel else {}),
        },
        # No wait on Redis is unbounded: connects give up after 5 s, replies after 30 s, idle sockets are checked.
        redis_socket_connect_timeout=5,
        redis_socket_timeout=30,
        redis_socket_keepalive=True,
        redis_backend_health_check_interval=30,
        broker_connection_timeout=5,
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
        timezone="UTC",
    )
    ssl_options = broker_ssl(settings.redis_url)
    if ssl_options is not None:
        # The result backend reads the same options, so a rediss:// URL without ssl_cert_reqs works for both.
        app.conf.broker_use_ssl = ssl_options
        app.conf.redis_backend_use_ssl = ssl_options
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


_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def broker_ssl(redis_url: str) -> dict[str, Any] | None:
    """kombu's TLS options from a ``rediss://`` URL's query (the parameters Celery's result backend reads there):
    ``ssl_cert_reqs`` (required, optional, none), ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``.
    None for a plain ``redis://`` URL."""
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS.get(query.get("ssl_cert_reqs", "required").lower())}
    if options["ssl_cert_reqs"] is None:
        raise ConfigError(f"REDIS_URL: ssl_cert_reqs={query['ssl_cert_reqs']!r} is not required, optional or none")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(name):
            options[name] = query[name]
    return options


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
