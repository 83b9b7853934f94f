"""Admitting a request: the queue-limit check and the no-loss records, in one atomic Redis call.

The one place that ties together the keys of the request ledger, the aging index and the arrival counter at
submission time. A Lua script, so the check and the writes cannot be split by another producer, and so a refused
request writes nothing (no undo, nothing half-accepted).
"""

from __future__ import annotations

import json

import redis

from app import aging_index, ledger, telemetry
from app.errors import QueueFull
from app.queues import priority_lists

_ADMIT = """
local waiting = 0
for i = 1, 10 do waiting = waiting + redis.call('LLEN', KEYS[i]) end
if waiting >= tonumber(ARGV[1]) then return -1 - waiting end
redis.call('ZADD', KEYS[11], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[12], ARGV[2], ARGV[4])
redis.call('HINCRBY', KEYS[13], ARGV[5], 1)
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[14], ARGV[3], ARGV[2])
  redis.call('HSET', KEYS[15], ARGV[2], ARGV[6])
end
return waiting
"""
_SCRIPTS: dict[int, object] = {}


def _script(client: redis.Redis):  # noqa: ANN202 - redis Script
    script = _SCRIPTS.get(id(client))
    if script is None:
        script = _SCRIPTS[id(client)] = client.register_script(_ADMIT)
    return script


def admit(
    client: redis.Redis,
    queue: str,
    model: str,
    task_id: str,
    now: float,
    message: dict,
    limit: int,
    aging_facts: dict | None,
) -> int:
    """Record the request if its queue has room; return the backlog it joins, or raise QueueFull."""
    keys = [
        *priority_lists(queue),
        ledger.SINCE,
        ledger.BODY,
        telemetry.ARRIVALS,
        aging_index.key(model),
        aging_index.FACTS,
    ]
    args = [limit, task_id, now, json.dumps(message), model, json.dumps(aging_facts) if aging_facts else ""]
    waiting = int(_script(client)(keys=keys, args=args))
    if waiting < 0:
        raise QueueFull(f"model {model!r} has {-1 - waiting} requests waiting, at its limit of {limit}")
    return waiting


def withdraw(client: redis.Redis, model: str, task_id: str) -> None:
    """Take back what ``admit`` recorded, for a request whose publish failed."""
    pipe = client.pipeline(transaction=False)
    ledger.forget(pipe, task_id)
    pipe.zrem(aging_index.key(model), task_id).hdel(aging_index.FACTS, task_id)
    pipe.hincrby(telemetry.ARRIVALS, model, -1)
    pipe.execute()
