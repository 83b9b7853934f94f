"""Request statistics per model version, kept in Redis so every worker on every host adds to the same counts.

Workers buffer their counts in memory and add them here from their heartbeat thread (one pipeline a period);
the gateway adds the refusals it makes itself and reads everything back for ``/metrics`` and the statistics
extension. ``HINCRBY`` / ``HINCRBYFLOAT`` are atomic, so any number of processes can add at once.

Fields of a version's hash: ``success``, ``fail:<CODE>``, ``inference_count`` (rows), ``exec_count`` (runtime
calls: a batch counts once), ``request_us``, ``queue_us``, ``compute_us`` (sums, microseconds), ``last_ms``
(the last inference, unix ms), ``b:<i>`` (requests whose latency fell in bucket i of ``LATENCY_BUCKETS_S``) and
``latency_s`` (the latency sum). Generative models add ``gen_tokens`` (tokens generated), ``ttft:b:<i>`` and
``ttft_s`` (time to first token, submission to first token: buckets of ``TOKEN_BUCKETS_S`` and sum), ``itl:b:<i>``
and ``itl_s`` (the time between two tokens of one sequence).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio

from app.broker.keys import FLEET_COUNTERS, GENERATION_LIVE, STATS_INDEX, model_stats
from app.broker.layout import text

#: Upper bounds of the request-latency histogram's buckets, seconds (the last bucket is +Inf).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Upper bounds of the time-to-first-token and inter-token-latency buckets, seconds (the last bucket is +Inf).
TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Fields holding sums of floats: always added with ``HINCRBYFLOAT``. ``HINCRBY`` refuses a field that holds a
#: float ("hash value is not an integer"), so a whole-number delta (0.0 when clock skew clamps every latency in a
#: period to zero) must not pick the integer command by its value.
FLOAT_FIELDS = frozenset({"latency_s", "ttft_s", "itl_s"})

#: (model, version) -> field -> amount to add.
Deltas = Mapping[tuple[str, int], Mapping[str, float]]


def bucket_of(latency_s: float) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS_S):
        if latency_s <= bound:
            return i
    return len(LATENCY_BUCKETS_S)


def token_bucket_of(seconds: float) -> int:
    for i, bound in enumerate(TOKEN_BUCKETS_S):
        if seconds <= bound:
            return i
    return len(TOKEN_BUCKETS_S)


def add(client: redis.Redis, deltas: Deltas) -> None:
    """Add buffered counts, one round trip."""
    if not deltas:
        return
    pipe = client.pipeline(transaction=False)
    for (model, version), fields in deltas.items():
        key = model_stats(model, version)
        pipe.sadd(STATS_INDEX, f"{model}:{version}")
        for name, amount in fields.items():
            if name == "last_ms":
                pipe.hset(key, name, int(amount))
            elif name in FLOAT_FIELDS or not float(amount).is_integer():
                pipe.hincrbyfloat(key, name, float(amount))
            else:
                pipe.hincrby(key, name, int(amount))
    pipe.execute()


async def count_failure_async(client: redis.asyncio.Redis, model: str, version: int | str, code: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.sadd(STATS_INDEX, f"{model}:{version}")
    pipe.hincrby(model_stats(model, version), f"fail:{code}", 1)
    await pipe.execute()


async def read_all(client: redis.asyncio.Redis) -> dict[tuple[str, str], dict[str, float]]:
    """Every version's counters: (model, version) -> field -> value."""
    members = sorted(text(m) for m in await client.smembers(STATS_INDEX))
    pairs = [tuple(m.rsplit(":", 1)) for m in members]
    pipe = client.pipeline(transaction=False)
    for model, version in pairs:
        pipe.hgetall(model_stats(model, version))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (model, version), raw in zip(pairs, await pipe.execute(), strict=True):
        out[(model, version)] = {text(k): float(v) for k, v in raw.items()}
    return out


def count_fleet_event(client: redis.Redis | Any, name: str, amount: int = 1) -> None:
    """A fleet-wide counter (e.g. ``ledger_resent``); works on a client or a pipeline."""
    client.hincrby(FLEET_COUNTERS, name, amount)


async def fleet_counters(client: redis.asyncio.Redis) -> dict[str, float]:
    return {text(k): float(v) for k, v in (await client.hgetall(FLEET_COUNTERS)).items()}


def set_live(
    client: redis.Redis, worker: str, model: str, sequences: int, kv_bytes: int, tokens_per_s: float = 0.0
) -> None:
    """A worker's running generations of one model now (gauges: the latest value wins): sequences in flight, their
    KV-cache bytes, and the tokens per second it made since it last said."""
    value = json.dumps(
        {"seqs": sequences, "kv_bytes": kv_bytes, "tokens_per_s": round(tokens_per_s, 2), "at": time.time()}
    )
    client.hset(GENERATION_LIVE, f"{worker}|{model}", value)


def read_live_now(client: redis.Redis, max_age_s: float) -> dict[tuple[str, str], dict[str, float]]:
    """:func:`read_live` for synchronous callers (``maas status``)."""
    return _live(client.hgetall(GENERATION_LIVE), max_age_s)  # type: ignore[arg-type]


def _live(fields: dict[Any, Any], max_age_s: float) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    now = time.time()
    for field, raw in fields.items():
        worker, _, model = text(field).partition("|")
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if now - float(value.get("at", 0)) <= max_age_s:
            out[(worker, model)] = {
                "seqs": float(value["seqs"]),
                "kv_bytes": float(value["kv_bytes"]),
                "tokens_per_s": float(value.get("tokens_per_s", 0.0)),
            }
    return out


async def read_live(client: redis.asyncio.Redis, max_age_s: float) -> dict[tuple[str, str], dict[str, float]]:
    """(worker, model) -> {"seqs", "kv_bytes", "tokens_per_s"}, leaving out what a dead worker left (older than
    ``max_age_s``)."""
    return _live(await client.hgetall(GENERATION_LIVE), max_age_s)  # type: ignore[misc]
