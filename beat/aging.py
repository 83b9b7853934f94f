"""Aging: requests of models under the ``aging`` policy gain priority while they wait, so nothing starves.

A message's level is fixed when it is sent, and moving a waiting message between Redis lists means reading and
rewriting its body: measured here, on a backlog of a few hundred large requests, that traffic made Redis and the
worker running the pass the bottleneck (aging's mean response went to 2.4x FIFO's). So the producer also writes a
small index entry per aging request (submission time, class, estimate, backlog, current level), and a promotion
sends a *copy* of the request at the higher level: same task id, no tensors, a reference to the body kept by the
request ledger. Whichever copy a worker takes first runs; every later one finds the result already stored and is
dropped unexecuted (``dedup``). Promoted copies join the tail of their new level, as the simulation assumes.

The aging clock of a request is stretched by its FIFO wait (``app.policies``). The producer can only guess that
wait (waiting requests x the mean estimate, no I/O on the hot path), and under SJF the requests left waiting are
the long ones, so the guess runs low: measured on bench.scheduling, live aging promoted twice as many requests as
the simulation with the exact figure. The pass sees every waiting request with its estimate, in submission order,
so at a request's first pass it replaces the guess with the work submitted before it and still waiting, over the
model's replicas: the FIFO wait as it stands at most one period after arrival.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis
from celery import Celery
from sqlalchemy import select

from app import policies
from app.broker import aging_index
from app.broker.aging_index import Entry
from app.broker.layout import model_queue
from app.db import replicas as replica_rows
from app.db.schema import Model
from app.db.session import session_scope
from app.lifecycle import ReplicaState
from app.settings import Settings


def work_ahead(entries: list[Entry], replicas: int) -> list[str]:
    """Pure: set the backlog of each entry not seen before (no ``"w"``) to the estimated work ahead of it.

    ``entries`` are the waiting requests in submission order; returns the ids whose facts changed.
    """
    ahead_s, changed = 0.0, []
    for task_id, _, f in entries:
        if not f.get("w"):
            f["b"], f["w"] = ahead_s / max(1, replicas), 1
            changed.append(task_id)
        ahead_s += f["e"]
    return changed


def due(entries: Iterable[Entry], now: float, params: policies.PolicyParams) -> list[tuple[str, int]]:
    """Pure: (task id, new level) for every waiting request whose level improved."""
    moves = []
    for task_id, submitted_at, f in entries:
        facts = policies.RequestFacts(f["c"], f["e"], None, max(0.0, now - submitted_at), f["b"])
        target = policies.aging(facts, params)
        if target < f["l"]:
            moves.append((task_id, target))
    return moves


def age_model(
    app: Celery, client: redis.Redis, model: str, params: policies.PolicyParams, max_age_s: float, replicas: int = 1
) -> int:
    """One pass over one model's waiting aging requests; returns how many were promoted."""
    now = time.time()
    entries = aging_index.waiting(client, model, now, max_age_s)
    if not entries:
        return 0
    facts_by_id = {i: f for i, _, f in entries}
    seen = work_ahead(entries, replicas)
    aging_index.save_facts(client, {i: facts_by_id[i] for i in seen})
    promoted = due(entries, now, params)
    # Oldest first, so among one pass's promotions the oldest is nearest the popping end of its new level.
    for task_id, level in promoted:
        app.send_task(
            "maas.infer",
            args=[model, None, None],
            kwargs={"ref": task_id, "dedup": True},
            queue=model_queue(model),
            priority=level,
            task_id=task_id,
        )
        aging_index.save_facts(client, {task_id: {**facts_by_id[task_id], "l": level}})
    aging_index.count_promotions(client, model, len(promoted))
    return len(promoted)


def age_all(app: Celery, settings: Settings, client: redis.Redis) -> dict[str, int]:
    with session_scope(settings.sqlalchemy_url) as session:
        replicas = {
            m.name: sum(r.state == ReplicaState.READY.value for r in replica_rows.live_for_model(session, m.id))
            for m in session.scalars(select(Model))
            if (m.policy or settings.policy) == policies.Policy.AGING
        }
    params = settings.policy_params()
    return {
        name: age_model(app, client, name, params, settings.result_expires_s, replicas=count)
        for name, count in replicas.items()
    }
