"""Beat's scheduler with a leader lease: only the beat holding it sends the periodic tasks (:mod:`beat.lease`).

A Celery scheduler (``beat_scheduler``) whose tick first claims or renews the lease in Redis when a claim is due,
then runs Celery's own tick only while it leads. The lease is renewed from the tick, not from a thread of its own,
so a beat whose loop is stuck (and so sends nothing) stops leading and another takes over.

The schedule is kept in memory, not in Celery's shelve file: the entries are short periods, and several beats
sharing MAAS_HOME (a shared mount) would otherwise write one file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from celery import beat as celery_beat

from app import logs
from app.broker import leases
from app.broker.clients import for_settings
from app.broker.keys import BEAT_LEADER
from app.celery_app import settings_of
from app.outage import BROKER_ERRORS
from beat.lease import Lease, takeover_bound_s

log = logging.getLogger("maas.beat")

#: A follower's tick never sleeps longer than this, so it notices a stop signal promptly.
MAX_TICK_S = 1.0


def beat_name(host: str) -> str:
    """A beat's name in the lease and in `maas status`: its host and process id (two beats may share a host)."""
    return f"beat@{host}:{os.getpid()}"


class LeaderScheduler(celery_beat.Scheduler):
    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        settings = settings_of(app)
        self.lease = Lease(settings.beat_lease_s)
        self.holder = leases.unique_holder(beat_name(settings.host))
        self.redis = for_settings(settings)
        self.leading = False
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now_s = time.monotonic()
        if self.lease.claim_due(now_s):
            self._claim(now_s)
        now_s = time.monotonic()
        leads = self.lease.leads(now_s)
        if leads != self.leading:
            self.leading = leads
            logs.event(
                log,
                "beat_leader" if leads else "beat_follower",
                beat=self.holder,
                lease_s=self.lease.lease_s,
                takeover_bound_s=takeover_bound_s(self.lease.lease_s),
            )
        until_claim_s = self.lease.until_next_claim_s(now_s)
        if not leads:
            return min(until_claim_s, MAX_TICK_S)
        return min(float(super().tick(*args, **kwargs)), until_claim_s)

    def _claim(self, sent_at_s: float) -> None:
        ttl_ms = int(self.lease.lease_s * 1000)
        try:
            won = leases.claim(self.redis, BEAT_LEADER, self.holder, ttl_ms)
        except BROKER_ERRORS:
            self.lease.unanswered(sent_at_s)  # a leader keeps its lease until it runs out; sends fail meanwhile
            return
        self.lease.claimed(sent_at_s, won)

    def close(self) -> None:
        # A beat stopped cleanly hands over at once instead of after its lease runs out.
        if self.leading:
            with contextlib.suppress(*BROKER_ERRORS):  # unanswered: the lease runs out by itself
                leases.release(self.redis, BEAT_LEADER, self.holder)
        super().close()
