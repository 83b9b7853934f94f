"""A daemon thread that stamps this worker's device row every few seconds.

A thread, not a Celery timer: with the solo pool a long load blocks the event loop, and a heartbeat that stops
during a load would get a healthy worker reaped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psutil

from app.broker import keys, stats
from app.broker.clients import for_settings
from app.broker.demand import push_observations
from app.db import devices
from app.db.session import session_scope
from workers import telemetry
from workers.context import WorkerContext

log = logging.getLogger("maas.worker")


class Heartbeat(threading.Thread):
    """Each period: stamp the device row with a heartbeat and telemetry, and ship buffered service times."""

    def __init__(self, ctx: WorkerContext, on_fenced: Callable[[str], None] | None = None) -> None:
        super().__init__(name="maas-heartbeat", daemon=True)
        self.ctx = ctx
        self.on_fenced = on_fenced
        self._fenced_epoch: int | None = None  # the epoch a reconcile was last asked for, so it is asked once
        self._redis = for_settings(ctx.settings)
        self._process = psutil.Process()
        self._stop_event = threading.Event()

    def beat(self) -> None:
        """Redis first, then the database, each on its own: an outage of one must not silence the other. The
        Redis mark is what keeps the reaper from taking this worker for lost while the database is away."""
        failed: list[BaseException] = []
        try:
            ttl_ms = int(self.ctx.settings.heartbeat_timeout_s * 1000)
            self._redis.set(keys.alive(self.ctx.worker_name), "1", px=ttl_ms)
            observed = self.ctx.observations.drain()
            if observed:
                push_observations(self._redis, observed)
            self.ship_stats()
        except Exception as exc:
            failed.append(exc)
        values = telemetry.sample(self.ctx.device, self._process)
        epoch = self.ctx.epoch
        try:
            with session_scope(self.ctx.settings.sqlalchemy_url) as session:
                current = devices.heartbeat(session, self.ctx.worker_name, values, epoch=epoch)
        except Exception as exc:
            failed.append(exc)
        else:
            if not current and self._fenced_epoch != epoch and self.on_fenced is not None:
                # Declared lost while this worker could not reach the fleet (workers.fencing).
                self.on_fenced(f"heartbeat refused: the device row moved past epoch {epoch}")
                self._fenced_epoch = epoch  # after the send: a send that failed is tried again next beat
        if failed:
            raise failed[0]

    def ship_stats(self) -> None:
        """Add the buffered request counts to Redis; on failure they stay buffered for the next period."""
        deltas = self.ctx.stats.drain()
        try:
            stats.add(self._redis, deltas)
        except Exception:
            self.ctx.stats.restore(deltas)
            raise

    def run(self) -> None:
        failing_since: float | None = None
        while not self._stop_event.wait(self.ctx.settings.heartbeat_s):
            try:
                self.beat()
                if failing_since is not None:
                    log.warning(
                        "heartbeat back",
                        extra={"worker": self.ctx.worker_name, "failed_s": round(time.monotonic() - failing_since, 1)},
                    )
                    failing_since = None
            except Exception:  # a database or Redis blip must not kill the thread; the next beat retries
                # One traceback when an outage starts, not one every period while it lasts.
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("heartbeat failed", exc_info=True, extra={"worker": self.ctx.worker_name})

    def stop(self) -> None:
        self._stop_event.set()
        try:
            self.ship_stats()  # the last period's counts, so a worker that stops loses none
        except Exception:
            log.warning("last request counts not shipped", exc_info=True, extra={"worker": self.ctx.worker_name})
