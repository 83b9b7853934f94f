"""Redis fails over: a primary and two replicas on three hosts, a Sentinel on each, and the fleet (kombu, Celery's
result backend and our own clients) given one setting, ``REDIS_URL=sentinel://...``. The primary is killed
mid-burst and stays dead; the Sentinels promote a replica, the other follows it, everyone reconnects, and every
accepted request is answered.

Run twice: with the default (no WAIT: Redis replication is asynchronous, so the promotion may lose writes that
were acknowledged; the count is reported, and each request is either answered or ends in a typed error, never a
hang), and with ``MAAS_REDIS_WAIT_REPLICAS=1``: a request is accepted only once a replica has it, and a result
stored only once a replica has it, so the promotion loses neither.

Recovery is measured two ways from the kill: ``serving_again_s``, to the first answer of a request sent after the
kill (a probe, sent ahead of the burst's backlog: the fleet accepts and answers new work again), and
``recovery_s``, to the last answer of the requests that were waiting. Each run prints its admission latency, so
the two lines side by side give WAIT's cost.
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
from app.outage import BROKER_ERRORS
from bench.models import wide_mlp
from harness.fleet import wait_for
from harness.netns import Network, SentinelRedis, Services, start_sentinel_redis

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

REQUESTS = 200
#: the burst's level and the probes' (0 is the aging pass's): a probe is served ahead of the burst's backlog
BURST_PRIORITY, PROBE_PRIORITY = 5, 1
#: probes after the kill, one every PROBE_PERIOD_S until one is answered: bounded in count and time
PROBE_PERIOD_S, MAX_PROBES, PROBE_WINDOW_S = 0.1, 300, 60.0


@pytest.fixture
def sentinel_redis(network: tuple[Network, Services]) -> Iterator[SentinelRedis]:
    net, services = network
    found = start_sentinel_redis(net)
    try:
        yield found
    finally:
        found.stop()
        for host in found.hosts:
            net.remove_host(host.name)


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
        # With WAIT: the default MAAS_REDIS_WAIT_TIMEOUT_MS (200 ms), as a fleet would run it.
        "MAAS_REDIS_WAIT_REPLICAS": str(wait_replicas),
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

    # On a machine busy enough to hold a heartbeat thread past the 3 s timeout, the reaper may declare a worker
    # lost as it starts (it then re-registers): load only on workers the database sees online.
    def both_online() -> bool:
        return sum(d["status"] == "online" for d in client.devices() if d["worker"].endswith("@a")) == 2

    wait_for(both_online, 60, "both workers online")
    for worker in ("gpu0@a", "gpu1@a"):
        client.load("mlp", worker=worker).wait(timeout_s=120)

    # Given a burst under way
    rng = np.random.default_rng(0)
    handles, submit_s, refused = [], [], []
    for _ in range(REQUESTS):
        x = rng.standard_normal((40, 16)).astype(np.float32)
        started = time.perf_counter()
        try:
            handles.append(client.infer("mlp", {"x": x}, priority=BURST_PRIORITY))
        except MaasError as exc:  # with WAIT: no replica confirmed it in time, so it was refused, not accepted
            refused.append(exc.code)
        submit_s.append(time.perf_counter() - started)
    wait_for(lambda: sum(h.ready() for h in handles[::10]) >= 2, 120, "the burst to be under way", interval_s=0.02)

    # When the primary dies (and stays dead: nobody restarts it during the test)
    answered_before = sum(h.ready() for h in handles)
    killed_at = time.time()
    sentinel_redis.servers["r1"].kill()
    assert answered_before < REQUESTS, "the burst ended before the failover"

    # Then new requests are accepted and answered again: probes until the first answer
    probes = send_probes(client, rng)
    replicas = {h.address for h in sentinel_redis.replicas}
    wait_for(lambda: sentinel_redis.current_primary() in replicas, 60, "the promotion")
    promoted_s = time.time() - killed_at

    # And every request is answered, the burst's and the probes'
    answers, typed, lost_ids = [], [], []
    for h in [*handles, *probes]:
        try:
            answers.append(h.wait(timeout_s=240))
        except MaasError as exc:  # a request the promotion lost: a typed error by its timeout, never a hang
            typed.append(exc.code)
            lost_ids.append(("probe" if h in probes else "burst", h.id))
    assert all(ans["outputs"][0]["shape"] == [40, 8] for ans in answers)
    assert len(answers) + len(typed) == len(handles) + len(probes)
    serving_again_s = seconds_after(killed_at, min(done_at(client, probes)))
    recovery_s = seconds_after(killed_at, max(done_at(client, handles)))
    twice = int(client.redis.hget(FLEET_COUNTERS, ANSWERED_TWICE) or 0)
    unreplicated = int(client.redis.hget(FLEET_COUNTERS, UNREPLICATED) or 0)
    sent = len(handles) + len(probes)
    report = {"sent": sent, "answered": len(answers), "twice": twice, "lost": sent - len(answers)}
    timing = {"promoted_s": round(promoted_s, 2), "serving_again_s": round(serving_again_s, 2)}
    timing |= {"recovery_s": round(recovery_s, 2), "submit_p50_ms": round(1000 * statistics.median(submit_s), 2)}
    name = "redis_failover_wait" if wait_replicas else "redis_failover_no_wait"
    extra = {"wait_replicas": wait_replicas, "probes": len(probes), "unreplicated_writes": unreplicated}
    extra |= {"lost_codes": sorted(set(typed)), "replicas": len(sentinel_redis.replicas)}
    extra |= {"refused_at_admission": len(refused)}
    extra |= {"promoted": sentinel_redis.current_primary(), "lost_ids": lost_ids}
    print(json.dumps({"scenario": name, **report, **extra, **timing}))
    if wait_replicas:
        assert typed == [], f"accepted with WAIT yet lost: {typed} {lost_ids}"
    assert recovery_s <= RECOVERY_TARGET_S, f"recovered in {recovery_s:.1f} s, over the {RECOVERY_TARGET_S} s target"


#: Issue 13's target for a Redis failover, from the kill to the last waiting request answered.
RECOVERY_TARGET_S = 15.0


def send_probes(client, rng) -> list:
    """New requests after the kill, one every PROBE_PERIOD_S until one is answered (or MAX_PROBES, or
    PROBE_WINDOW_S). An admission refused while no primary is known is not a probe sent: it was never accepted."""
    probes: list = []
    started = time.monotonic()
    while len(probes) < MAX_PROBES and time.monotonic() - started < PROBE_WINDOW_S:
        try:
            x = rng.standard_normal((40, 16)).astype(np.float32)
            probes.append(client.infer("mlp", {"x": x}, priority=PROBE_PRIORITY))
            if any(p.ready() for p in probes):
                return probes
        except MaasError:
            pass  # BROKER_UNAVAILABLE after the client's bounded retry: the caller was told; try again
        except BROKER_ERRORS:
            pass  # a readiness check that met the failover
        time.sleep(PROBE_PERIOD_S)  # the probe rate, not a wait for a condition
    return probes


def done_at(client, handles) -> list[dt.datetime]:
    """When each answered request's result was stored (the backend's date_done, in UTC)."""
    found = [AsyncResult(h.id, app=client.app).date_done for h in handles]
    return [d if d.tzinfo else d.replace(tzinfo=dt.UTC) for d in found if d is not None]


def seconds_after(start_unix_s: float, at: dt.datetime) -> float:
    return (at - dt.datetime.fromtimestamp(start_unix_s, dt.UTC)).total_seconds()
