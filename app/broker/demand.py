"""Per-model demand and service-time telemetry in Redis.

Producers count arrivals (``HINCRBY``, in the same round trip as the ledger record); workers push observed
service times in batches from their heartbeat thread; the allocator turns counts into an arrival-rate EWMA.
The infer hot path never touches the database.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable

import redis

from app.broker.keys import ARRIVALS, RATES, service_samples
from app.broker.layout import text
from app.service_time import ServiceTimeEstimator

#: Observed service times kept per (model, device class): the newest this many.
SERVICE_SAMPLES = 500


def push_observations(client: redis.Redis, observations: Iterable[tuple[str, str, float, float]]) -> None:
    """(model, device_class, size, service_s) tuples -> capped per-key lists, one round trip."""
    pipe = client.pipeline(transaction=False)
    keys = set()
    for model, device_class, size, service_s in observations:
        key = service_samples(model, device_class)
        pipe.rpush(key, f"{size:g} {service_s:.6f}")
        keys.add(key)
    for key in keys:
        pipe.ltrim(key, -SERVICE_SAMPLES, -1)
    pipe.execute()


def estimator(
    client: redis.Redis, model: str, declared_s: float, device_classes: Iterable[str]
) -> ServiceTimeEstimator:
    """An estimator per (model, device class), cold-started from the declared figure, fed the recent samples."""
    est = ServiceTimeEstimator(default_service_s=declared_s)
    for device_class in device_classes:
        key = (model, device_class)
        est.declare(key, declared_s)
        for raw in client.lrange(service_samples(model, device_class), 0, -1):
            size, service_s = text(raw).split()
            est.observe(key, float(size), float(service_s))
    return est


def ewma_rate(previous_rate: float, count_delta: int, dt_s: float, half_life_s: float) -> float:
    """Pure: fold one interval's arrivals into an exponentially weighted arrival rate."""
    if dt_s <= 0:
        return previous_rate
    alpha = 1.0 - math.exp(-math.log(2) * dt_s / half_life_s)
    return (1 - alpha) * previous_rate + alpha * (count_delta / dt_s)


def update_rates(client: redis.Redis, half_life_s: float, now: float | None = None) -> dict[str, float]:
    """Advance every model's arrival-rate EWMA to now; returns model -> rate per second."""
    now = time.time() if now is None else now
    counts = {text(k): int(v) for k, v in client.hgetall(ARRIVALS).items()}
    previous = {text(k): json.loads(v) for k, v in client.hgetall(RATES).items()}
    rates, pipe = {}, client.pipeline(transaction=False)
    for model, count in counts.items():
        prev = previous.get(model)
        if prev is None:
            rate, last = 0.0, now if count else 0.0
        else:
            rate = ewma_rate(prev["rate_per_s"], count - prev["count"], now - prev["at"], half_life_s)
            last = now if count > prev["count"] else prev.get("last_arrival_at", 0.0)
        rates[model] = rate
        entry = {"rate_per_s": rate, "count": count, "at": now, "last_arrival_at": last}
        pipe.hset(RATES, model, json.dumps(entry))
    pipe.execute()
    return rates


def read_rates(client: redis.Redis) -> dict[str, float]:
    return {text(k): json.loads(v)["rate_per_s"] for k, v in client.hgetall(RATES).items()}


def last_arrivals(client: redis.Redis) -> dict[str, float]:
    """When each model last saw a request, to the precision of the allocator's period (unix seconds)."""
    return {text(k): json.loads(v).get("last_arrival_at", 0.0) for k, v in client.hgetall(RATES).items()}
