"""The small index the producer keeps of waiting requests under the aging policy (see beat/aging.py for why).

The producer writes an entry per request in its admission script (:func:`app.broker.scripts.admit`); beat's
aging pass reads and updates the entries here.
"""

from __future__ import annotations

import json
from typing import Any

import redis
import redis.asyncio

from app.broker.keys import AGING_FACTS, AGING_PROMOTED, aging_index
from app.broker.layout import result_key, text

#: One waiting request: (task id, submitted at in unix s, facts).
Entry = tuple[str, float, dict[str, Any]]


def waiting(client: redis.Redis, model: str, now: float, max_age_s: float) -> list[Entry]:
    """The model's requests still waiting, in submission order; entries of answered requests are dropped.

    Entries older than ``max_age_s`` (the result expiry) are dropped too: their result may have come and gone.
    """
    key = aging_index(model)
    client.zremrangebyscore(key, 0, now - max_age_s)
    indexed: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    if not indexed:
        return []
    ids = [text(raw_id) for raw_id, _ in indexed]
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.exists(result_key(task_id))
    answered = pipe.execute()
    raw_facts = client.hmget(AGING_FACTS, ids)
    finished = [i for i, done, f in zip(ids, answered, raw_facts, strict=True) if done or f is None]
    if finished:
        drop = client.pipeline(transaction=False)
        drop.zrem(key, *finished)
        drop.hdel(AGING_FACTS, *finished)
        drop.execute()
    return [
        (task_id, float(score), json.loads(f))
        for task_id, score, done, f in zip(ids, [s for _, s in indexed], answered, raw_facts, strict=True)
        if not done and f is not None
    ]


def save_facts(client: redis.Redis, facts_by_id: dict[str, dict[str, Any]]) -> None:
    if facts_by_id:
        client.hset(AGING_FACTS, mapping={i: json.dumps(f) for i, f in facts_by_id.items()})


def count_promotions(client: redis.Redis, model: str, count: int) -> None:
    if count:
        client.hincrby(AGING_PROMOTED, model, count)


def promotions(client: redis.Redis, model: str) -> int:
    """Promoted copies sent for ``model`` so far."""
    return int(client.hget(AGING_PROMOTED, model) or 0)


async def promotions_all(client: redis.asyncio.Redis) -> dict[str, int]:
    """Promoted copies sent so far, by model."""
    return {text(k): int(v) for k, v in (await client.hgetall(AGING_PROMOTED)).items()}
