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
