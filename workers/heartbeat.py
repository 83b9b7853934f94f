"""A daemon thread that stamps this worker's device row every few seconds.

A thread, not a Celery timer: with the solo pool a long load blocks the event loop, and a heartbeat that stops
during a load would get a healthy worker reaped.
"""

from __future__ import annotations

import logging
import threading

from app.db import devices
from app.db.session import session_scope

log = logging.getLogger("maas.worker")


class Heartbeat(threading.Thread):
    def __init__(self, url: str, worker_name: str, period_s: float) -> None:
        super().__init__(name="maas-heartbeat", daemon=True)
        self.url, self.worker_name, self.period_s = url, worker_name, period_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.period_s):
            try:
                with session_scope(self.url) as session:
                    devices.heartbeat(session, self.worker_name)
            except Exception:  # a database blip must not kill the thread; the next beat retries
                log.warning("heartbeat failed", exc_info=True, extra={"worker": self.worker_name})

    def stop(self) -> None:
        self._stop_event.set()
