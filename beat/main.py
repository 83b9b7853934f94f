"""``maas beat``: the fleet's periodic scheduler. It only sends messages; workers do the work. Several may run:
the one holding the beat lease sends, the others stand by (:mod:`beat.leader`)."""

from __future__ import annotations

import contextlib

from app import logs
from app.broker import heartbeats
from app.broker.clients import for_settings
from app.broker.layout import SYSTEM_QUEUE
from app.celery_app import create_app
from app.outage import BROKER_ERRORS
from app.settings import Settings
from beat.leader import beat_name


def schedule(settings: Settings) -> dict[str, dict[str, object]]:
    entries = {
        "reap-lost-workers": {
            "task": "maas.reap",
            "schedule": settings.reap_period_s,
            # Expire unsent runs: if no worker picks a reap up within a period, the next one supersedes it.
            "options": {"queue": SYSTEM_QUEUE, "priority": 0, "expires": settings.reap_period_s},
        },
        "recover-lost-requests": {
            "task": "maas.recover",
            "schedule": settings.reap_period_s,
            "options": {"queue": SYSTEM_QUEUE, "priority": 0, "expires": settings.reap_period_s},
        },
        "age-waiting-requests": {
            "task": "maas.age",
            "schedule": settings.aging_period_s,
            "options": {"queue": SYSTEM_QUEUE, "priority": 0, "expires": settings.aging_period_s},
        },
    }
    if settings.allocation_enabled:
        entries["allocate"] = {
            "task": "maas.allocate",
            "schedule": settings.allocation_period_s,
            "options": {"queue": SYSTEM_QUEUE, "priority": 0, "expires": settings.allocation_period_s},
        }
    return entries


def run(settings: Settings, loglevel: str | None = None) -> None:
    logs.configure(loglevel or settings.log_level, settings.log_format)
    # Beat sends a task every aging period (a second by default): one INFO line each would be most of an idle
    # fleet's logs. They show at DEBUG.
    logs.quiet(loglevel or settings.log_level, "celery.beat")
    settings.home.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    app.conf.beat_schedule = schedule(settings)
    # Several beats may run (one per control host); only the holder of the beat lease sends (beat.leader).
    app.conf.beat_scheduler = "beat.leader:LeaderScheduler"
    # `maas status` shows each beat's last heartbeat ("dead for N s" once it stops) and which one leads.
    name = beat_name(settings.host)
    stamper = heartbeats.Stamper(settings.redis_url, name, settings.heartbeat_s, settings.redis_sentinel_master)
    stamper.start()
    try:
        app.start(["beat", "--loglevel", loglevel or settings.log_level])
    finally:
        stamper.stop()
        with contextlib.suppress(*BROKER_ERRORS):
            heartbeats.forget(for_settings(settings), name)
