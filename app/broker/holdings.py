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
from collections.abc import Callable
from typing import Any

import redis

from app.broker import scripts
from app.broker.keys import fence, held_by
from app.broker.layout import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, PRIORITY_LEVELS, priority_lists, task_id_of, text


def hold(client: redis.Redis, worker: str, task_id: str, finished: str | None = None) -> int | None:
    """Record that ``worker`` runs ``task_id``, and drop the request it ``finished`` before, in one round trip.

    The previous request is dropped here rather than when it ends so that each request costs the worker one
    round trip, not two; an entry left for a request that did finish is harmless (it is no longer in ``unacked``).
    Returns the epoch the reaper declared ``worker`` lost at, if it ever did (read in the same round trip): a
    worker whose own epoch is not newer is fenced (``workers.fencing``).
    """
    pipe = client.pipeline(transaction=False)
    if finished is not None:
        pipe.hdel(held_by(worker), finished)
    pipe.hset(held_by(worker), task_id, time.time())
    pipe.get(fence(worker))
    lost_at = pipe.execute()[-1]
    return int(lost_at) if lost_at is not None else None


def declare_lost(client: redis.Redis, worker: str, epoch: int) -> None:
    """Fence every life of ``worker`` up to ``epoch``: its next request sees it and reconciles first."""
    client.set(fence(worker), epoch)


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
    restored = _restore_where(client, lambda task_id, raw, tag: task_id in held)
    client.hdel(key, *held)
    return restored


def _restore_where(client: redis.Redis, wanted: Callable[[str, bytes, bytes], bool]) -> list[str]:
    """Requeue each message in kombu's ``unacked`` that ``wanted(task_id, raw, tag)`` picks, atomically against an
    acknowledgement (``lua/restore.lua``), marked redelivered; returns the task ids requeued."""
    restored = []
    for tag, raw in client.hscan_iter(KOMBU_UNACKED):
        task_id = task_id_of(raw)
        if task_id is None or not wanted(task_id, raw, tag):
            continue
        target = _redelivered(raw)
        if target is None:
            continue
        list_key, message = target
        keys = [KOMBU_UNACKED, KOMBU_UNACKED_INDEX, list_key]
        if int(scripts.script(client, "restore")(keys=keys, args=[text(tag), message])):
            restored.append(task_id)
    return restored


def give_back_orphans(client: redis.Redis, older_than_s: float, now: float | None = None) -> list[str]:
    """Requeue infer requests that kombu delivered but no worker recorded holding, taken over ``older_than_s`` ago.

    A worker records a request (:func:`hold`) when its task starts, a moment after kombu delivered the message and
    put it in ``unacked``. A worker killed in between leaves a request nobody holds, which only the visibility
    timeout would bring back. A live worker records what it takes within milliseconds, so an unheld infer message
    taken longer ago than a heartbeat timeout belongs to a dead worker: it is requeued (atomically against an
    acknowledgement, as :func:`give_back` does). Other tasks (loads, system tasks) are left alone. Returns the ids.
    """
    held: set[str] = set()
    for key in client.scan_iter(match=held_by("*")):
        held |= {text(k) for k in client.hkeys(key)}
    cutoff = (time.time() if now is None else now) - older_than_s

    def orphaned(task_id: str, raw: bytes, tag: bytes) -> bool:
        if task_id in held or not _is_infer(raw):
            return False
        taken_at = client.zscore(KOMBU_UNACKED_INDEX, tag)
        return taken_at is not None and taken_at <= cutoff

    return _restore_where(client, orphaned)


def _is_infer(raw: bytes | str) -> bool:
    try:
        message = json.loads(raw)[0]
        # Generations are held the moment they start too, so an unheld one is as orphaned as an infer request.
        return bool(message.get("headers", {}).get("task") in ("maas.infer", "maas.generate"))
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return False


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
