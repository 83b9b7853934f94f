"""Redis fails over: a primary and a replica on two hosts, three Sentinels, and the fleet (kombu, Celery's result
backend and our own clients) given one setting, ``REDIS_URL=sentinel://...``. The primary is killed mid-burst;
the Sentinels promote the replica, everyone reconnects to it, and every accepted request is answered.

Run twice: with the default (no WAIT: Redis replication is asynchronous, so the promotion may lose writes that
were acknowledged; the count is reported, and each request is either answered or ends in a typed error, never a
hang), and with ``MAAS_REDIS_WAIT_REPLICAS=1``: a request is accepted only once the replica has it, and a result
stored only once the replica has it, so the promotion loses neither. Each run prints its admission latency, so the
two lines side by side give WAIT's cost.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Iterator

import numpy as np
import pytest
from celery.result import AsyncResult

from app.broker.clients import UNREPLICATED
from app.broker.first_result import ANSWERED_TWICE
from app.broker.keys import FLEET_COUNTERS
from app.errors import MaasError
from bench.models import wide_mlp
from harness.fleet import wait_for
from harness.netns import Network, SentinelRedis, Services, start_sentinel_redis

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

REQUESTS = 200


@pytest.fixture
def sentinel_redis(network: tuple[Network, Services]) -> Iterator[SentinelRedis]:
    net, services = network
    found = start_sentinel_redis(net, services.host)
    try:
        yield found
    finally:
        found.stop()
        for name in ("r1", "r2"):
            net.remove_host(name)


# Without WAIT the run measures what a failover may lose (a count, not a pass/fail), so it is a benchmark's run
# (`python -m bench.failover` sets the variable), not part of the suite.
NO_WAIT = pytest.param(
    0,
    id="no_wait",
    marks=pytest.mark.skipif(
        os.environ.get("MAAS_FAILOVER_NO_WAIT") != "1",
        reason="a measurement of what a failover without WAIT loses: run by python -m bench.failover",
    ),
)


@pytest.fixture(params=[NO_WAIT, pytest.param(1, id="wait_1")])
def wait_replicas(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def env(env, sentinel_redis, wait_replicas):
    return {
        **env,
        "REDIS_URL": sentinel_redis.url,
        "MAAS_REDIS_WAIT_REPLICAS": str(wait_replicas),
        "MAAS_REDIS_WAIT_TIMEOUT_MS": "500",
        "MAAS_WORKER_SYSTEM_TASKS": "false",
    }


def test_the_primary_dies_mid_burst_the_replica_takes_over_and_every_request_is_answered(
    env, client, hosts, register, sentinel_redis, tmp_path, wait_replicas
):
    register("mlp", wide_mlp(tmp_path / "mlp.onnx"))
    a, ctl = hosts.host("a"), hosts.host("ctl")
    procs = [hosts.worker(a, 0), hosts.worker(a, 1), hosts.controller(ctl)]
    hosts.wait_ready(procs)
    hosts.beat(ctl)  # the ledger sweep resends what a failover may drop between a pop and its unacked record
    for worker in ("gpu0@a", "gpu1@a"):
        client.load("mlp", worker=worker).wait(timeout_s=120)

    # Given a burst under way
    rng = np.random.default_rng(0)
    handles, submit_s = [], []
    for _ in range(REQUESTS):
        x = rng.standard_normal((40, 16)).astype(np.float32)
        started = time.perf_counter()
        handles.append(client.infer("mlp", {"x": x}))
        submit_s.append(time.perf_counter() - started)
    wait_for(lambda: sum(h.ready() for h in handles[::10]) >= 2, 120, "the burst to be under way", interval_s=0.02)

    # When the primary dies
    answered_before = sum(h.ready() for h in handles)
    killed_at = time.time()
    sentinel_redis.servers["r1"].kill()
    assert answered_before < REQUESTS, "the burst ended before the failover"

    # Then the Sentinels promote the replica and every request is answered
    wait_for(lambda: sentinel_redis.current_primary() == sentinel_redis.replica.address, 60, "the promotion")
    promoted_s = time.time() - killed_at
    # The old primary comes back (as an operator or a supervisor would restart it) and the Sentinels make it the
    # new primary's replica: until then every WAIT runs to its timeout, as the setting asks.
    sentinel_redis.restart("r1")
    answers, typed = [], []
    for h in handles:
        try:
            answers.append(h.wait(timeout_s=240))
        except MaasError as exc:  # a request the promotion lost: a typed error by its timeout, never a hang
            typed.append(exc.code)
    assert all(ans["outputs"][0]["shape"] == [40, 8] for ans in answers)
    assert len(answers) + len(typed) == REQUESTS
    if wait_replicas:
        assert typed == [], f"accepted with WAIT yet lost: {typed}"
    done = [AsyncResult(h.id, app=client.app).date_done for h in handles]
    done = [d for d in done if d is not None]
    last = max(d if d.tzinfo else d.replace(tzinfo=dt.UTC) for d in done)
    recovery_s = (last - dt.datetime.fromtimestamp(killed_at, dt.UTC)).total_seconds()
    twice = int(client.redis.hget(FLEET_COUNTERS, ANSWERED_TWICE) or 0)
    unreplicated = int(client.redis.hget(FLEET_COUNTERS, UNREPLICATED) or 0)
    report = {"sent": REQUESTS, "answered": len(answers), "twice": twice, "lost": REQUESTS - len(answers)}
    timing = {"promoted_s": round(promoted_s, 2), "recovery_s": round(recovery_s, 2)}
    timing["submit_p50_ms"] = round(1000 * statistics.median(submit_s), 2)
    name = "redis_failover_wait" if wait_replicas else "redis_failover_no_wait"
    extra = {"wait_replicas": wait_replicas, "unreplicated_writes": unreplicated, "lost_codes": sorted(set(typed))}
    print(json.dumps({"scenario": name, **report, **extra, **timing}))
