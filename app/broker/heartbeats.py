"""Heartbeats of the fleet's singletons, beat and the controller(s), in Redis, for ``maas status``.

Workers beat into the database (their device row) and Redis (``keys.alive``); beat and a controller have no row, so
each stamps its name in one Redis hash every ``Settings.heartbeat_s`` from a daemon thread. A stamp older than
``Settings.heartbeat_timeout_s`` reads "dead for N s".
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from app.broker.clients import DEFAULT_SENTINEL_MASTER, sync_client
from app.broker.keys import COMPONENT_HEARTBEATS
from app.broker.layout import text

log = logging.getLogger("maas.heartbeat")


def stamp(client: redis.Redis, component: str, now: float | None = None) -> None:
    client.hset(COMPONENT_HEARTBEATS, component, repr(time.time() if now is None else now))


#: a beat names itself by host and process id, so every restart leaves its old row; rows silent this long go
FORGET_AFTER_S = 24 * 3600.0


def read(client: redis.Redis, now: float | None = None) -> dict[str, float]:
    """Component name -> unix time of its last heartbeat; rows silent for `FORGET_AFTER_S` are deleted."""
    stamps = {text(k): float(v) for k, v in client.hgetall(COMPONENT_HEARTBEATS).items()}
    cutoff = (time.time() if now is None else now) - FORGET_AFTER_S
    stale = [name for name, at in stamps.items() if at < cutoff]
    if stale:
        client.hdel(COMPONENT_HEARTBEATS, *stale)
    return {name: at for name, at in stamps.items() if at >= cutoff}


def forget(client: redis.Redis, component: str) -> None:
    """A component stopping cleanly removes its row (a crashed one reads "dead for N s" until forgotten)."""
    client.hdel(COMPONENT_HEARTBEATS, component)


def describe(last_at: float, timeout_s: float, now: float | None = None) -> str:
    """``alive (2 s ago)`` or ``dead for 40 s`` (silent for longer than ``timeout_s``)."""
    age_s = max(0.0, (time.time() if now is None else now) - last_at)
    return f"dead for {age_s:.0f} s" if age_s > timeout_s else f"alive ({age_s:.0f} s ago)"


class Stamper(threading.Thread):
    """Stamps ``component`` every ``period_s``; a Redis outage is logged once when it starts and once when it ends."""

    def __init__(
        self, redis_url: str, component: str, period_s: float, sentinel_master: str = DEFAULT_SENTINEL_MASTER
    ) -> None:
        super().__init__(name=f"maas-heartbeat-{component}", daemon=True)
        self.redis_url = redis_url
        self.sentinel_master = sentinel_master
        self.component = component
        self.period_s = period_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        failing = False
        while True:
            try:
                stamp(sync_client(self.redis_url, self.sentinel_master), self.component)
                if failing:
                    log.warning("heartbeat back", extra={"component": self.component})
                failing = False
            except Exception:
                if not failing:
                    log.warning("heartbeat failed", exc_info=True, extra={"component": self.component})
                failing = True
            if self._stop_event.wait(self.period_s):
                return

    def stop(self) -> None:
        self._stop_event.set()
