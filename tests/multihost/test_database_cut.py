"""PostgreSQL unreachable from one host only: that host's path to port 5432 of the services host is cut (new
connections refused, open ones aborted; Redis and every other path stay up), the database itself stays up for
everyone else.

The cut-off host's workers keep serving what they hold, from Redis alone, and are not declared lost (their Redis
heartbeats go on). A load sent to one of them meanwhile writes its lifecycle records (LOADING, READY) once the
path is back: they wait in the worker (retried with backoff for up to ``MAAS_WORKER_DB_RETRY_S``), none is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pytest

from bench.models import add_one, wide_mlp
from harness.fleet import wait_for
from harness.netns import POSTGRES_PORT, Network, Services

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

#: How long host a stays cut off: past the heartbeat timeout (3 s) and two reap periods (1 s), so a fleet that
#: judged a worker by its database heartbeat alone would have declared it lost.
CUT_S = 8.0
#: Requests sent while the path is cut: one every SEND_PERIOD_S, at most MAX_REQUESTS (bounded in count and time).
SEND_PERIOD_S, MAX_REQUESTS = 0.1, 120


@pytest.fixture
def env(env):
    return {**env, "MAAS_WORKER_SYSTEM_TASKS": "false"}


def seconds_after(start_unix_s: float, iso: str) -> float:
    at = dt.datetime.fromisoformat(iso)
    at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return (at - dt.datetime.fromtimestamp(start_unix_s, dt.UTC)).total_seconds()


def test_a_host_cut_off_from_postgres_serves_what_it_holds_and_its_records_arrive_later(
    env, client, hosts, register, network: tuple[Network, Services], tmp_path
):
    _net, services = network
    register("small", add_one(tmp_path / "small.onnx"))
    register("big", wide_mlp(tmp_path / "big.onnx"))
    a, b, ctl = hosts.host("a"), hosts.host("b"), hosts.host("ctl")
    procs = [hosts.worker(a, 0), hosts.worker(a, 1), hosts.worker(b, 0), hosts.controller(ctl)]
    hosts.wait_ready(procs)
    hosts.beat(ctl)  # the reaper runs throughout: a's workers must not be declared lost
    for worker in ("gpu0@a", "gpu0@b"):
        client.load("small", worker=worker).wait(timeout_s=120)

    # Given host a cut off from PostgreSQL alone
    cut_at = time.time()
    a.cut_port(services.host.address, POSTGRES_PORT)
    try:
        # When a load is sent to a's other worker (its LOADING and READY records can only be written later)
        load = client.load("big", worker="gpu1@a")
        # And requests keep coming, to the model a's first worker holds
        x = np.zeros((1, 4), dtype=np.float32)
        handles = []
        while time.time() - cut_at < CUT_S and len(handles) < MAX_REQUESTS:
            handles.append(client.infer("small", {"x": x}))
            time.sleep(SEND_PERIOD_S)  # the send rate, not a wait for a condition
        answers = [h.wait(timeout_s=60) for h in handles]
        answered_during_cut = time.time() - cut_at

        # Then every request was answered, host a's worker among those answering, while still cut off
        by_a = sum(ans["parameters"]["worker"] == "gpu0@a" for ans in answers)
        assert len(answers) == len(handles) and by_a > 0, f"{by_a} of {len(handles)} answered by gpu0@a"
        # And nothing of host a was declared lost, nor did the load's records reach the database yet
        devices = {d["worker"]: d for d in client.devices()}
        assert devices["gpu0@a"]["status"] != "lost" and devices["gpu1@a"]["status"] != "lost", devices
        small_on_a = [r for r in client.replicas() if r["model"] == "small" and r["worker"] == "gpu0@a"]
        assert [r["state"] for r in small_on_a] == ["READY"]
        big = [r for r in client.replicas() if r["model"] == "big"]
        assert all(r["state"] != "READY" for r in big), big
    finally:
        restored_at = time.time()
        a.restore_port(services.host.address, POSTGRES_PORT)

    # When the path is back, the load's records arrive: the replica READY on gpu1@a, its history complete
    load.wait(timeout_s=120)

    def big_ready():
        found = [r for r in client.replicas() if r["model"] == "big" and r["state"] == "READY"]
        return found

    (replica,) = wait_for(big_ready, 60, "the load's READY to reach the database")
    assert replica["worker"] == "gpu1@a"
    steps = [e for e in client.history("big") if e["replica"] == replica["replica"]]
    assert [e["to"] for e in steps][-2:] == ["LOADING", "READY"], steps
    record_back_s = seconds_after(restored_at, steps[-1]["at"])
    # And the model it loaded serves
    y = client.infer("big", {"x": np.zeros((1, 16), dtype=np.float32)}).wait(timeout_s=60)
    assert y["parameters"]["worker"] == "gpu1@a"

    def all_online() -> bool:
        devices = {d["worker"]: d for d in client.devices()}
        return all(devices[w]["status"] == "online" for w in ("gpu0@a", "gpu1@a", "gpu0@b"))

    wait_for(all_online, 30, "host a's devices online again (their database heartbeats back)")
    report = {"sent": len(handles), "answered": len(answers), "answered_by_cut_host": by_a}
    timing = {"cut_s": round(answered_during_cut, 2), "records_back_after_s": round(record_back_s, 2)}
    print(json.dumps({"scenario": "database_cut_one_host", **report, **timing}))
