"""Celery's Redis result backend, except that the first final result of a task is the one that stays.

A request can run twice: a host cut off from the fleet keeps running the request it held; the reaper gives that
request back and another replica answers it; when the link returns, the cut-off worker stores its answer too.
Celery skips a write when it reads a SUCCESS first, but the read and the write are two round trips (two workers can
both pass the read), a FAILURE is overwritten, and nothing counts it. Here one script (``lua/store_result.lua``)
decides atomically: the second answer is dropped, not published, and counted (``answered_twice`` in the fleet
counters). Other keys (chords, groups) are written as Celery does.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.backends.redis import SentinelBackend
from celery.exceptions import BackendStoreError

from app import logs
from app.broker import scripts
from app.broker.clients import UNREPLICATED, result_durability, wait_replicas
from app.broker.keys import FLEET_COUNTERS
from app.broker.layout import RESULT_PREFIX
from app.broker.stats import count_fleet_event
from app.errors import ForgedMessage
from app.signing import SignedRedisBackend, verify_result

log = logging.getLogger("maas.results")

#: the fleet counter a dropped second answer increments
ANSWERED_TWICE = "answered_twice"


class _FirstResult(SignedRedisBackend):
    """The first-answer-stays writes, mixed into Celery's Redis and Sentinel backends (signed, as
    :class:`app.signing.SignedRedisBackend` signs and checks results)."""

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        # Named by class (not URL) in create_app, Celery hands over no URL: take the fleet's. Celery's own lookup
        # by URL turns redis+socket:// into socket:// for its backend; do the same.
        if url is None and app is not None:
            url = app.maas_settings.redis_url
        if url is not None and url.startswith("redis+socket://"):
            url = url[len("redis+") :]
        super().__init__(app=app, url=url, **kwargs)

    def _store_result(
        self, task_id: Any, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        """Celery's, less its read-then-write check: the script makes that check atomically in the write."""
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
        try:
            self._set_with_state(self.get_key_for_task(task_id), self.encode(meta), state)
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _set(self, key: Any, value: Any, expires: Any = None) -> None:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if not name.startswith(RESULT_PREFIX):
            super()._set(key, value, expires)
            return
        if expires is None:
            expires = self.expires
        ttl = int(expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0)
        client = self.client
        settings = self.app.maas_settings  # type: ignore[attr-defined]
        # One pipeline, so one connection: WAIT covers the writes of the connection it is sent on.

        durability = result_durability(client, settings)

        def durable(pipe: Any) -> None:
            wait_replicas(pipe, durability.wait_for, settings)

        replies = scripts.pipelined(client, "store_result", [name, FLEET_COUNTERS], [value, ttl], then=durable)
        if isinstance(replies[0], Exception):
            raise replies[0]
        if not durability.reached(replies):
            count_fleet_event(client, UNREPLICATED)
        if replies and replies[0] == 0 and settings.signing_key:
            self._replace_if_forged(name, value, ttl)

    def _replace_if_forged(self, name: str, value: Any, ttl: int) -> None:
        """A "first" answer that fails the fleet's signature was written by someone else: the genuine one replaces
        it (else whoever can write Redis could pre-empt any answer), and it is not counted as answered twice."""
        old = self.client.get(name)
        if old is None:
            return
        try:
            verify_result(self.app.maas_settings.signing_key, old.decode(errors="replace"))  # type: ignore[attr-defined]
        except ForgedMessage as exc:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(name, value, ex=ttl or None)
            pipe.publish(name, value)
            pipe.hincrby(FLEET_COUNTERS, ANSWERED_TWICE, -1)
            pipe.execute()
            logs.event(log, "forged_result_replaced", logging.ERROR, key=name, reason=exc.message)


class FirstResultBackend(_FirstResult):
    """For ``redis://`` URLs."""


class FirstResultSentinelBackend(_FirstResult, SentinelBackend):
    """For ``sentinel://`` URLs: the primary is asked of the Sentinels again after a failover."""
