"""Reading queue depths straight from kombu's priority lists."""

from __future__ import annotations

import redis

from app.broker.layout import priority_lists


def depth_by_priority(client: redis.Redis, queue: str) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in priority_lists(queue):
        pipe.llen(key)
    return [int(n) for n in pipe.execute()]


def depths(client: redis.Redis, queues: list[str]) -> dict[str, int]:
    return {q: sum(depth_by_priority(client, q)) for q in queues}


def peek(client: redis.Redis, queue: str, per_level: int) -> list[tuple[str, bytes]]:
    """The next ``per_level`` messages of each of ``queue``'s levels, as (list, raw message), in the order a
    consumer would pop them (highest level first, oldest first): what a worker looks at before it takes one out of
    turn. Nothing is removed."""
    pipe = client.pipeline(transaction=False)
    lists = priority_lists(queue)
    for key in lists:
        pipe.lrange(key, -per_level, -1)  # the popping end is the tail
    return [(key, raw) for key, raws in zip(lists, pipe.execute(), strict=True) for raw in reversed(raws)]


def take(client: redis.Redis, key: str, raw: bytes) -> bool:
    """Remove one message seen by :func:`peek`; True when this caller got it (LREM is atomic: of two workers
    that saw the same message, one gets it and the other is told it is gone)."""
    return int(client.lrem(key, -1, raw)) == 1  # type: ignore[arg-type]  # redis-py takes bytes too
