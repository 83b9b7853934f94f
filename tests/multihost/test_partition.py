"""A host is cut off mid-burst and comes back: it kept running, but what it held has been failed and replaced.

While cut off, its worker is declared lost (a new epoch on its device row, and the fence in Redis), its replica
FAILED, its held request given back and answered by the other host, and the model re-placed there. When the link
returns, the worker meets the fence (its next request, its next heartbeat), drops the replica the database
replaced, and registers again; it serves the model only once the allocator gives it a new replica. A request the
cut-off worker finished after it was answered elsewhere reaches the caller once, with the first answer.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pytest
from celery.result import AsyncResult

from app.broker.first_result import ANSWERED_TWICE
from app.broker.keys import FLEET_COUNTERS
from bench.models import wide_mlp
from harness.fleet import wait_for
from tests.multihost.test_host_loss import events, ready_workers

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

REQUESTS = 300


@pytest.fixture
def env(env):
    return {**env, "MAAS_ALLOCATION": "true", "MAAS_ALLOCATION_PERIOD_S": "2", "MAAS_WORKER_SYSTEM_TASKS": "false"}


def utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def test_a_cut_off_host_that_returns_reconciles_and_serves_nothing_it_no_longer_owns(
    env, client, hosts, register, configure, tmp_path
):
    register("mlp", wide_mlp(tmp_path / "mlp.onnx"))
    configure("mlp", min_replicas=2)
    a, b, ctl = hosts.host("a"), hosts.host("b"), hosts.host("ctl")
    procs = [hosts.worker(a, 0), hosts.worker(b, 0), hosts.worker(b, 1), hosts.controller(ctl)]
    hosts.wait_ready(procs)
    worker_a = procs[0]
    hosts.beat(ctl)
    wait_for(lambda: "gpu0@a" in ready_workers(client) and len(ready_workers(client)) >= 2, 120, "a replica on a")
    old = [r for r in client.replicas() if r["worker"] == "gpu0@a" and r["state"] == "READY"]
    assert len(old) == 1

    # Given a burst under way on both hosts
    rng = np.random.default_rng(0)
    handles = [client.infer("mlp", {"x": rng.standard_normal((40, 16)).astype(np.float32)}) for _ in range(REQUESTS)]
    wait_for(lambda: sum(h.ready() for h in handles[::10]) >= 3, 120, "the burst to be under way", interval_s=0.02)

    # When host a is cut off: its processes keep running
    cut_at = time.time()
    a.cut()

    def replaced() -> bool:
        reps = {r["replica"]: r for r in client.replicas(include_terminal=True)}
        ready = ready_workers(client)
        return reps[old[0]["replica"]]["state"] == "FAILED" and len(ready) >= 2 and "gpu0@a" not in ready

    wait_for(replaced, 90, "the fleet to fail a's replica and re-place the model on b")
    assert worker_a.alive()

    # And the link comes back
    back_at = time.time()
    a.reconnect()
    answers = [h.wait(timeout_s=240) for h in handles]
    assert len(answers) == REQUESTS and all(ans["outputs"][0]["shape"] == [40, 8] for ans in answers)

    # Then the returning worker reconciled: it dropped the replaced replica and took a new epoch
    reconciled = wait_for(lambda: events(worker_a, "worker_reconciled"), 60, "gpu0@a to reconcile")
    assert reconciled[0]["dropped_replicas"] == [old[0]["replica"]]
    assert reconciled[0]["to_epoch"] > reconciled[0]["from_epoch"]
    failed = {r["replica"]: r for r in client.replicas(include_terminal=True)}[old[0]["replica"]]
    assert failed["state"] == "FAILED" and failed["reason"].startswith("worker lost: no heartbeat from gpu0@a")
    wait_for(lambda: {d["worker"]: d for d in client.devices()}["gpu0@a"]["alive"], 60, "gpu0@a back alive")

    # And nothing was served by the replaced replica after the link returned, beyond the request it held when cut
    history = client.history("mlp")
    new_ready = [
        utc(dt.datetime.fromisoformat(e["at"]))
        for e in history
        if e["worker"] == "gpu0@a" and e["to"] == "READY" and e["replica"] != old[0]["replica"]
    ]
    until = min(new_ready, default=dt.datetime.now(dt.UTC))
    back = dt.datetime.fromtimestamp(back_at, dt.UTC)
    done = {h.id: utc(AsyncResult(h.id, app=client.app).date_done) for h in handles}
    stale = [
        h.id
        for h, ans in zip(handles, answers, strict=True)
        if ans["parameters"]["worker"] == "gpu0@a" and back <= done[h.id] < until
    ]
    assert len(stale) <= 1, stale

    twice = int(client.redis.hget(FLEET_COUNTERS, ANSWERED_TWICE) or 0)
    recovery_s = (max(done.values()) - dt.datetime.fromtimestamp(cut_at, dt.UTC)).total_seconds()
    report = {"sent": REQUESTS, "answered": len(answers), "twice": twice, "stale_after_return": len(stale)}
    print(json.dumps({"scenario": "partition", **report, "recovery_s": round(recovery_s, 2)}))
