"""Waiting for results without a thread or a blocking call per waiting request.

Celery's Redis result backend stores a task's result under ``celery-task-meta-<id>`` and publishes the same
value on a channel of that name. One pub/sub connection per gateway process subscribes to the channel of each
request in flight (before the request is published, so its result cannot be missed), and one reader task hands
each message to the request's future. Pub/sub is at most once: a reconnect after a Redis restart loses what was
published meanwhile, so a sweep reads the stored results of every request still waiting once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import redis.asyncio

from app import logs, signing
from app.broker.keys import GATEWAY_IDLE_CHANNEL
from app.broker.layout import RESULT_PREFIX, result_key, text
from app.errors import ForgedMessage

log = logging.getLogger("maas.gateway")

#: How often the stored results of requests still waiting are read, in case a published one was missed.
SWEEP_PERIOD_S = 1.0
#: A channel nobody publishes on, subscribed to so the connection stays in pub/sub mode between requests.
IDLE_CHANNEL = GATEWAY_IDLE_CHANNEL


class ResultWaiter:
    def __init__(self, client: redis.asyncio.Redis, signing_key: str = "") -> None:
        self.client = client
        self.signing_key = signing_key  # results must carry its signature (app.signing); "" checks nothing
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # A channel nobody publishes on keeps the connection in pub/sub mode while no request is in flight.
        await self._pubsub.subscribe(IDLE_CHANNEL)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._sweep())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._pubsub.aclose()

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def expect(self, task_id: str) -> asyncio.Future[dict[str, Any]]:
        """Subscribe to ``task_id``'s result; call before the request is published."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = future
        try:
            await self._pubsub.subscribe(result_key(task_id))
        except BaseException:
            self._waiting.pop(task_id, None)
            raise
        return future

    async def forget(self, task_id: str) -> None:
        """Stop waiting for ``task_id``. Never raises: the answer (or error) the caller has stands either way, and a
        subscription left behind is removed by the sweep."""
        if self._waiting.pop(task_id, None) is None:
            return
        try:
            await self._pubsub.unsubscribe(result_key(task_id))
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("unsubscribe failed; the sweep drops it", extra={"task_id": task_id})

    def _deliver(self, task_id: str, raw: bytes) -> None:
        future = self._waiting.get(task_id)
        if future is None or future.done():
            return
        try:
            if self.signing_key:
                raw = signing.verify_result(self.signing_key, raw.decode(errors="replace")).encode()
            meta = orjson.loads(raw)
            if self.signing_key and meta.get("task_id") != task_id:
                raise ForgedMessage(f"the result stored under {task_id} is another task's; refused")
        except orjson.JSONDecodeError:
            log.error("unreadable result", extra={"task_id": task_id})
            return
        except ForgedMessage as exc:
            logs.event(log, "forged_result", logging.ERROR, task_id=task_id, reason=exc.message)
            meta = {"status": "FAILURE", "result": {"exc_type": "ForgedMessage", "exc_message": [exc.message]}}
        if meta.get("status") in ("SUCCESS", "FAILURE"):
            future.set_result(meta)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning("result channel lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            except Exception:
                # A reader that died would leave every answer to the once-a-second sweep: log and go on.
                log.exception("result reader failed; going on")
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = text(message["channel"])
            data = message["data"]
            self._deliver(channel[len(RESULT_PREFIX) :], data if isinstance(data, bytes) else str(data).encode())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_PERIOD_S)
            try:
                await self._sweep_once()
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # Redis is away; the requests' own timeouts still run
            except Exception:
                log.exception("result sweep failed; going on")

    async def _sweep_once(self) -> None:
        ids = [i for i, f in self._waiting.items() if not f.done()]
        if ids:
            values = await self.client.mget([result_key(i) for i in ids])
            for task_id, raw in zip(ids, values, strict=True):
                if raw is not None:
                    self._deliver(task_id, raw if isinstance(raw, bytes) else str(raw).encode())
        # After a reconnect redis-py subscribes again to every channel it knew, including ones being dropped:
        # unsubscribe whatever no request waits for any more.
        wanted = {result_key(i) for i in self._waiting} | {IDLE_CHANNEL}
        stale = [c for c in (text(c) for c in self._pubsub.channels) if c not in wanted]
        if stale:
            await self._pubsub.unsubscribe(*stale)
