"""Which worker holds which request, so that a worker's death gives its requests back at once.

kombu's Redis transport records a message a worker took in its ``unacked`` hash, and only a visibility timeout
(longer than the longest model load, so tens of minutes) brings it back if the worker dies. A worker records each
request it runs here under its own name (task id -> when it started) and removes it when the request is done.
When the worker is known dead (beat's reaper marks it lost, or it starts again under the same name), every request
it held is found in ``unacked`` by its task id and requeued at once, under the same id: the caller still waiting
gets its answer from another replica. (Celery does not show a task its kombu delivery tag, hence the search.)
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from app.broker import scripts
from app.broker.keys import held_by
from app.broker.layout import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, PRIORITY_LEVELS, priority_lists, task_id_of, text


def hold(client: redis.Redis, worker: str, task_id: str, finished: str | None = None) -> None:
    """Record that ``worker`` runs ``task_id``, and drop the request it ``finished`` before, in one round trip.

    The previous request is dropped here rather than when it ends so that each request costs the worker one
    round trip, not two; an entry left for a request that did finish is harmless (it is no longer in ``unacked``).
    """
    pipe = client.pipeline(transaction=False)
    if finished is not None:
        pipe.hdel(held_by(worker), finished)
    pipe.hset(held_by(worker), task_id, time.time())
    pipe.execute()


def _redelivered(raw: bytes | str) -> tuple[str, str] | None:
    """kombu's unacked entry -> (the list it goes back onto, the message marked redelivered); None if unreadable."""
    try:
        message, _exchange, routing_key = json.loads(raw)
        priority = int(message.get("properties", {}).get("priority") or 0)
    except (ValueError, TypeError, AttributeError):
        return None
    level = min(max(priority, 0), len(PRIORITY_LEVELS) - 1)
    headers: dict[str, Any] = message.setdefault("headers", {})
    headers["redelivered"] = True
    message.get("properties", {}).get("delivery_info", {})["redelivered"] = True
    return priority_lists(routing_key)[level], json.dumps(message)


def give_back(client: redis.Redis, worker: str) -> list[str]:
    """Requeue every request ``worker`` held (it is dead); returns their task ids."""
    key = held_by(worker)
    held = {text(k) for k in client.hkeys(key)}
    if not held:
        return []
    restored = []
    for tag, raw in client.hscan_iter(KOMBU_UNACKED):
        task_id = task_id_of(raw)
        if task_id not in held:
            continue
        target = _redelivered(raw)
        if target is None:
            continue
        list_key, message = target
        keys = [KOMBU_UNACKED, KOMBU_UNACKED_INDEX, list_key]
        if int(scripts.script(client, "restore")(keys=keys, args=[text(tag), message])):
            restored.append(task_id)
    client.hdel(key, *held)
    return restored


def delivery_tag(client: redis.Redis, task_id: str) -> str | None:
    """kombu's delivery tag of the message ``task_id`` a worker holds unacknowledged (a scan: call it once)."""
    for tag, raw in client.hscan_iter(KOMBU_UNACKED):
        if task_id_of(raw) == task_id:
            return text(tag)
    return None


def keep_alive(client: redis.Redis, tag: str) -> None:
    """Restart the visibility clock of a held message that is still running (a long generation).

    kombu restores a message whose ``unacked_index`` score is older than the visibility timeout; a generation may
    run longer than that, so its worker moves the score to now every so often. Only an existing entry is touched.
    """
    client.zadd(KOMBU_UNACKED_INDEX, {tag: time.time()}, xx=True)
