"""The request ledger: every accepted request is recorded in Redis until its result exists.

Why: kombu's Redis transport pops a message (BRPOP) and only then records it as unacknowledged. A worker killed in
that window takes the message with it, and no visibility timeout brings it back. The ledger closes the gap: a
sweep (run by beat) finds requests that have no result and are neither waiting in a queue nor held as
unacknowledged, twice in a row, and sends them again under the same task id, so the waiting client gets its
answer. A request can then run twice, which is why requests must be idempotent (infer is).

The request ledger's records; the keys are in :mod:`app.broker.keys`, kombu's lists in :mod:`app.broker.layout`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from app.broker.keys import LEDGER_BODY as BODY
from app.broker.keys import LEDGER_SINCE as SINCE
from app.broker.keys import LEDGER_SUSPECT as SUSPECT
from app.broker.layout import KOMBU_UNACKED, priority_lists, result_key, task_ids_in, text

#: ``resend(task_id, body)``: sends a recorded request again under its own id.
Resend = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Verdict:
    done: frozenset[str]  # a result exists: forget them
    lost: frozenset[str]  # found nowhere twice in a row: send again
    suspect: frozenset[str]  # found nowhere once: look again next sweep


def classify(candidates: Iterable[str], answered: set[str], present: set[str], suspects: set[str]) -> Verdict:
    """Pure: sort the ledger's old entries by what the sweep saw."""
    candidates = set(candidates)
    done = candidates & answered
    missing = candidates - done - present
    return Verdict(frozenset(done), frozenset(missing & suspects), frozenset(missing - suspects))


def record(pipe: redis.client.Pipeline, task_id: str, message: dict[str, Any]) -> None:
    """Queue the ledger writes for one published request on ``pipe`` (the caller executes it).

    ``message`` holds what a resend needs: name, queue, priority, args, kwargs, headers.
    """
    pipe.zadd(SINCE, {task_id: time.time()})
    pipe.hset(BODY, task_id, json.dumps(message))


def answered(client: redis.Redis, task_id: str) -> bool:
    """Whether a result is stored for ``task_id`` (a request sent as several copies runs only once)."""
    return bool(client.exists(result_key(task_id)))


def original(client: redis.Redis, task_id: str) -> tuple[str, int | None, list[Any], float | None] | None:
    """(model, version, inputs, deadline_at) of a recorded request, or None once it was answered and forgotten."""
    body = client.hget(BODY, task_id)
    if body is None:
        return None
    message = json.loads(body)
    model, version, inputs = message["args"]
    return model, version, inputs, message.get("kwargs", {}).get("deadline_at")


def touch(client: redis.Redis, task_ids: Iterable[str]) -> None:
    """Mark requests as still running (a long generation taken off its queue): the sweep sees them as young.

    A generation a worker took straight from its queue is in no list and not unacknowledged; without this the
    sweep would resend it while it runs. If the worker dies, the touches stop and the sweep resends it as usual.
    """
    ids = list(task_ids)
    if ids:
        client.zadd(SINCE, dict.fromkeys(ids, time.time()), xx=True)


def forget(pipe: redis.client.Pipeline, task_id: str) -> None:
    """Take back a record whose request was refused or never published (the caller executes ``pipe``)."""
    pipe.zrem(SINCE, task_id)
    pipe.hdel(BODY, task_id)


def _present(client: redis.Redis, queues: set[str]) -> set[str]:
    """Task ids waiting in these queues or held unacknowledged by some worker."""
    pipe = client.pipeline(transaction=False)
    for queue in sorted(queues):
        for key in priority_lists(queue):
            pipe.lrange(key, 0, -1)
    pipe.hvals(KOMBU_UNACKED)
    found: set[str] = set()
    for values in pipe.execute():
        found |= task_ids_in(values)
    return found


def sweep(client: redis.Redis, min_age_s: float, max_age_s: float, resend: Resend) -> Verdict:
    """One pass: forget answered requests, resend lost ones (``resend(task_id, body)``); returns the verdict.

    Entries older than ``max_age_s`` (the result expiry) are dropped unsent: their result may have come and gone.
    """
    now = time.time()
    expired = client.zrangebyscore(SINCE, 0, now - max_age_s)
    if expired:
        drop = client.pipeline(transaction=False)
        drop.zrem(SINCE, *expired)
        drop.hdel(BODY, *expired)
        drop.execute()
    old = [text(i) for i in client.zrangebyscore(SINCE, 0, now - min_age_s)]
    if not old:
        client.delete(SUSPECT)
        return Verdict(frozenset(), frozenset(), frozenset())
    pipe = client.pipeline(transaction=False)
    for task_id in old:
        pipe.exists(result_key(task_id))
    answered = {task_id for task_id, exists in zip(old, pipe.execute(), strict=True) if exists}
    bodies = dict(zip(old, client.hmget(BODY, old), strict=True))
    queues = {json.loads(b)["queue"] for i, b in bodies.items() if b is not None and i not in answered}
    present = _present(client, queues) if queues else set()
    suspects = {text(s) for s in client.smembers(SUSPECT)}
    verdict = classify(old, answered, present, suspects)
    for task_id in verdict.lost:
        body = bodies[task_id]
        if body is not None:
            resend(task_id, json.loads(body))
    forget = list(verdict.done | {i for i, b in bodies.items() if b is None})
    pipe = client.pipeline(transaction=True)
    if forget:
        pipe.zrem(SINCE, *forget)
        pipe.hdel(BODY, *forget)
    if verdict.lost:
        pipe.zadd(SINCE, {task_id: time.time() for task_id in verdict.lost})
    pipe.delete(SUSPECT)
    if verdict.suspect:
        pipe.sadd(SUSPECT, *verdict.suspect)
    pipe.execute()
    return verdict
