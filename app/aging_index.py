"""The small index the producer keeps of waiting requests under the aging policy (see beat/aging.py for why).

The one module that knows these keys: the producer writes an entry per request, beat's aging pass reads them.
"""

from __future__ import annotations

import json

import redis

_INDEX = "maas:aging:{model}"  # zset: task id -> submitted at (unix s)
FACTS = "maas:aging:facts"  # hash: task id -> {"c": class, "e": estimate s, "b": backlog s, "l": current level}


def key(model: str) -> str:
    return _INDEX.format(model=model)


def record(pipe: redis.client.Pipeline, model: str, task_id: str, submitted_at: float, facts: dict) -> None:
    """Queue the index writes for one aging request on the producer's pipeline (the caller executes it)."""
    pipe.zadd(key(model), {task_id: submitted_at}).hset(FACTS, task_id, json.dumps(facts))
