"""Reading queue depths straight from Redis (the one place that knows kombu's priority-list naming)."""

from __future__ import annotations

import redis

from app.celery_app import PRIORITY_LEVELS, PRIORITY_SEP


def priority_lists(queue: str) -> list[str]:
    # kombu stores level 0 under the bare name and level p under "<queue><sep><p>".
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_LEVELS]


def depth_by_priority(client: redis.Redis, queue: str) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in priority_lists(queue):
        pipe.llen(key)
    return [int(n) for n in pipe.execute()]


def depths(client: redis.Redis, queues: list[str]) -> dict[str, int]:
    return {q: sum(depth_by_priority(client, q)) for q in queues}
