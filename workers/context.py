"""What one worker process knows about itself: settings, identity, device, cache, and its Celery consumer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from app.broker.clients import for_settings
from app.db.devices import DeviceInfo
from app.settings import Settings
from workers.cache import ModelCache
from workers.telemetry import Observations, RequestStats


@dataclass
class WorkerContext:
    settings: Settings
    worker_name: str
    device: DeviceInfo
    device_id: int
    cache: ModelCache = field(default_factory=ModelCache)
    observations: Observations = field(default_factory=Observations)
    stats: RequestStats = field(default_factory=RequestStats)
    consumer: Any = None  # celery.worker.consumer.Consumer, captured by a bootstep once it starts
    app: Any = None  # the worker's Celery app (for answering a message that never became a task)
    last_held: str | None = None  # the request recorded as held last (app.broker.holdings drops it with the next)
    epoch: int = 0  # this life's epoch, from the device row at registration (workers.fencing)

    @property
    def redis(self) -> redis.Redis:
        """This process's Redis client (made on first use, so never before a fork)."""
        return for_settings(self.settings)

    def subscribe(self, queue: str) -> None:
        # Scheduled on the consumer's event loop, as Celery's own add_consumer control command does: it runs
        # after the current task returns, before the next message is fetched.
        self.consumer.call_soon(self.consumer.add_task_queue, queue)

    def unsubscribe(self, queue: str) -> None:
        self.consumer.call_soon(self.consumer.cancel_task_queue, queue)

    def consuming(self) -> list[str]:
        tc = self.consumer.task_consumer if self.consumer is not None else None
        return sorted(q.name for q in tc.queues) if tc is not None else []


#: Set once by ``workers.main`` before the Celery worker starts; tasks read it.
CURRENT: WorkerContext | None = None


def current() -> WorkerContext:
    if CURRENT is None:
        raise RuntimeError("worker context not initialised: tasks only run inside `maas worker`")
    return CURRENT
