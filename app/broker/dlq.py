"""Dead letters: requests no worker could serve, kept with the reason until an operator looks (`maas dlq`).

A request whose model no replica on its queue holds is given back (requeued) so that a replica that does hold
it can take it: right after an unload a worker still consumes the queue for a moment. A message that names a
model nobody serves would go round for ever, so deliveries are counted per request and, past
``MAX_DELIVERIES``, the request is answered with its error and recorded here instead of being requeued again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from app.broker.keys import DEAD_LETTERS, LEDGER_BODY, redeliveries
from app.broker.layout import text

#: Deliveries of one request to workers that do not hold its model before it is dead-lettered.
MAX_DELIVERIES = 10
#: How long a request's delivery count is kept (longer than any request waits).
DELIVERY_COUNT_TTL_S = 3600
#: Dead letters kept, newest first; older ones are dropped.
MAX_ENTRIES = 10_000


def count_delivery(client: redis.Redis, task_id: str) -> int:
    """Count one more delivery of ``task_id`` to a worker that could not serve it; returns the count."""
    pipe = client.pipeline(transaction=False)
    pipe.incr(redeliveries(task_id))
    pipe.expire(redeliveries(task_id), DELIVERY_COUNT_TTL_S)
    count, _ = pipe.execute()
    return int(count)


def record(client: redis.Redis, task_id: str, queue: str, reason: str) -> None:
    """Keep a dead letter: the request's id, queue, reason, and what the ledger still holds of it."""
    body = client.hget(LEDGER_BODY, task_id)
    entry = {
        "task_id": task_id,
        "queue": queue,
        "reason": reason,
        "at": time.time(),
        "request": json.loads(body) if body is not None else None,
    }
    pipe = client.pipeline(transaction=False)
    pipe.lpush(DEAD_LETTERS, json.dumps(entry))
    pipe.ltrim(DEAD_LETTERS, 0, MAX_ENTRIES - 1)
    pipe.execute()


def entries(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, newest first."""
    return [json.loads(text(raw)) for raw in client.lrange(DEAD_LETTERS, 0, limit - 1)]


def purge(client: redis.Redis) -> int:
    """Drop every dead letter; returns how many there were."""
    pipe = client.pipeline(transaction=True)
    pipe.llen(DEAD_LETTERS)
    pipe.delete(DEAD_LETTERS)
    count, _ = pipe.execute()
    return int(count)
