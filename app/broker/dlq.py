"""Dead letters: requests no worker could serve, kept with the reason until an operator looks (`maas dlq`).

A request whose model no replica on its queue holds is given back (requeued) so that a replica that does hold
it can take it: right after an unload a worker still consumes the queue for a moment. A message that names a
model nobody serves would go round for ever, so deliveries are counted per request and, past
``MAX_DELIVERIES``, the request is answered with its error and recorded here instead of being requeued again.

A message in a model queue that is not a Celery message at all (not JSON, no id to answer under) cannot be
answered: the worker that takes it records it here with the reason and a bounded copy of its bytes, and drops it
from the queue, so it is never delivered again. Such an entry is marked ``malformed`` and cannot be replayed.

Each entry has an ``id``: the request's task id, or ``dl-<hex>`` for a malformed message without one.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from app.broker.keys import DEAD_LETTERS, LEDGER_BODY, redeliveries
from app.broker.layout import result_key, text

#: Deliveries of one request to workers that do not hold its model before it is dead-lettered.
MAX_DELIVERIES = 10
#: How long a request's delivery count is kept (longer than any request waits).
DELIVERY_COUNT_TTL_S = 3600
#: Dead letters kept, newest first; older ones are dropped.
MAX_ENTRIES = 10_000
#: How much of a malformed message's bytes an entry keeps (what `maas dlq show` previews).
MAX_BODY_CHARS = 4096


def count_delivery(client: redis.Redis, task_id: str) -> int:
    """Count one more delivery of ``task_id`` to a worker that could not serve it; returns the count."""
    pipe = client.pipeline(transaction=False)
    pipe.incr(redeliveries(task_id))
    pipe.expire(redeliveries(task_id), DELIVERY_COUNT_TTL_S)
    count, _ = pipe.execute()
    return int(count)


def record(client: redis.Redis, task_id: str, queue: str, reason: str, deliveries: int | None = None) -> None:
    """Keep a dead letter: the request's id, queue, reason, and what the ledger still holds of it."""
    body = client.hget(LEDGER_BODY, task_id)
    entry = {
        "id": task_id,
        "task_id": task_id,
        "queue": queue,
        "reason": reason,
        "at": time.time(),
        "deliveries": deliveries,
        "malformed": False,
        "request": json.loads(body) if body is not None else None,
    }
    _push(client, entry)


def record_malformed(client: redis.Redis, queue: str, reason: str, raw: bytes | str) -> str:
    """Keep a message that cannot be answered (no readable id); returns the entry's id."""
    data = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    entry = {
        "id": f"dl-{uuid.uuid4().hex[:16]}",
        "task_id": None,
        "queue": queue,
        "reason": reason,
        "at": time.time(),
        "deliveries": 1,
        "malformed": True,
        "request": None,
        "bytes": len(raw),
        "body": data[:MAX_BODY_CHARS],
    }
    _push(client, entry)
    return str(entry["id"])


def _push(client: redis.Redis, entry: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.lpush(DEAD_LETTERS, json.dumps(entry))
    pipe.ltrim(DEAD_LETTERS, 0, MAX_ENTRIES - 1)
    pipe.execute()


def entry_id(entry: dict[str, Any]) -> str:
    """An entry's id (entries written before ids existed are known by their task id)."""
    return str(entry.get("id") or entry.get("task_id"))


def entries(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, newest first."""
    return [json.loads(text(raw)) for raw in client.lrange(DEAD_LETTERS, 0, limit - 1)]


def stored(client: redis.Redis) -> list[tuple[Any, dict[str, Any]]]:
    """Every entry with its stored form (what :func:`remove` takes), newest first."""
    return [(raw, json.loads(text(raw))) for raw in client.lrange(DEAD_LETTERS, 0, -1)]


def find(client: redis.Redis, ident: str) -> tuple[Any, dict[str, Any]] | None:
    """The stored form and the entry whose id (or task id) is ``ident``, newest first; None when there is none."""
    for raw in client.lrange(DEAD_LETTERS, 0, -1):
        entry = json.loads(text(raw))
        if ident in (entry.get("id"), entry.get("task_id")):
            return raw, entry
    return None


def forget_answer(client: redis.Redis, task_id: str) -> None:
    """Before a replay: drop the request's stored answer (its dead-letter error) and its delivery count, so the
    replayed request is answered afresh and counted from zero."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(result_key(task_id))
    pipe.delete(redeliveries(task_id))
    pipe.execute()


def remove(client: redis.Redis, stored: Any) -> int:
    """Drop one entry by its stored form (after a replay); returns how many were removed."""
    return int(client.lrem(DEAD_LETTERS, 1, stored))


def purge(client: redis.Redis) -> int:
    """Drop every dead letter; returns how many there were."""
    pipe = client.pipeline(transaction=True)
    pipe.llen(DEAD_LETTERS)
    pipe.delete(DEAD_LETTERS)
    count, _ = pipe.execute()
    return int(count)
