"""The tasks beat sends to the system queue (``maas.system``): reap, recover, age, allocate.

They run on a ``maas controller`` (a worker with no device, :mod:`beat.controller`) or, when there is none, on
the serving workers, which then register them too: the CLI, the composition root, passes :func:`register` to
the worker, so ``workers`` never imports ``beat``. They use only the app's settings and this process's Redis
client, never a worker's context.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.broker.clients import for_settings
from app.celery_app import settings_of


def register(app: Celery) -> None:
    """Define beat's tasks on ``app``."""
    settings = settings_of(app)

    @app.task(name="maas.recover")
    def recover_task() -> dict[str, int]:
        from beat.recovery import recover

        return recover(app)

    @app.task(name="maas.age")
    def age_task() -> dict[str, int]:
        from beat.aging import age_all

        return age_all(app, settings, for_settings(settings))

    @app.task(name="maas.allocate")
    def allocate_task(dry_run: bool = False) -> dict[str, Any]:
        from beat.allocation import allocate

        return allocate(app, dry_run=dry_run)

    @app.task(name="maas.reap")
    def reap_task() -> list[str]:
        from beat.reaper import reap

        return reap(settings)
