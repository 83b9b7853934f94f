"""A request running on a worker that dies is answered by another replica within the heartbeat timeout plus a
little, not after the visibility timeout (left at its production default here: 30 minutes)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.broker import holdings, keys
from app.settings import Settings
from bench.models import wide_mlp
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
ROWS = 6000  # about 3 s of work for the wide MLP on one core: long enough to be killed mid-request


@pytest.fixture
def env(env):
    return {**env, "MAAS_REAP_PERIOD_S": "1", "MAAS_WORKER_SYSTEM_TASKS": "false"}


def test_a_request_held_by_a_killed_worker_is_answered_by_another_replica_at_once(
    env, client, fleet, register, tmp_path
):
    settings = Settings.from_env(env)
    assert settings.visibility_timeout_s >= 1800  # the production default: recovery must not wait for it
    register("slow", wide_mlp(tmp_path / "slow.onnx", in_width=16, hidden=2048, layers=5, out_width=8))
    fleet.controller()
    fleet.beat()
    w0 = fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    client.load("slow", worker="w0@test").wait(timeout_s=120)

    x = np.random.default_rng(0).standard_normal((ROWS, 16)).astype(np.float32)
    handle = client.infer("slow", {"x": x}, timeout_s=120)
    wait_for(lambda: client.redis.hexists(keys.held_by("w0@test"), handle.id), 60, "w0 to be running the request")
    client.load("slow", worker="w1@test").wait(timeout_s=120)  # the replica that will take over
    w0.kill()
    killed_at = time.monotonic()

    answer = handle.wait(timeout_s=120)
    recovered_s = time.monotonic() - killed_at
    print(f"answered {recovered_s:.1f}s after the kill (heartbeat timeout {settings.heartbeat_timeout_s:g}s)")
    assert answer["parameters"]["worker"] == "w1@test"
    assert answer["outputs"][0]["shape"] == [ROWS, 8]
    assert recovered_s < settings.heartbeat_timeout_s + 15, f"answered {recovered_s:.1f}s after the kill"
    assert client.redis.hlen(keys.held_by("w0@test")) == 0
    assert client.redis.hlen(keys.held_by("w1@test")) <= 1  # the last request w1 ran: dropped with its next
    assert holdings.give_back(client.redis, "w0@test") == []  # given back once, not twice


def test_an_orphan_request_taken_by_a_worker_that_died_before_recording_it_is_requeued(redis_url):
    import json

    import redis as redis_lib

    from app.broker.layout import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, priority_lists

    client = redis_lib.Redis.from_url(redis_url)
    client.flushall()
    now = 10_000.0

    def unacked(tag: str, task_id: str, task: str, taken_at: float) -> None:
        message = {"body": "[]", "headers": {"task": task, "id": task_id}, "properties": {"priority": 3}}
        client.hset(KOMBU_UNACKED, tag, json.dumps([message, "", "m.slow"]))
        client.zadd(KOMBU_UNACKED_INDEX, {tag: taken_at})

    unacked("t1", "orphan", "maas.infer", now - 100)  # its worker died between delivery and hold()
    unacked("t2", "running", "maas.infer", now - 100)  # a live worker holds it
    holdings.hold(client, "w1@test", "running")
    unacked("t3", "young", "maas.infer", now - 1)  # just delivered: its worker is about to record it
    unacked("t4", "a-load", "maas.load", now - 100)  # not a request: loads are left to their own recovery

    assert holdings.give_back_orphans(client, older_than_s=30, now=now) == ["orphan"]
    assert sorted(client.hkeys(KOMBU_UNACKED)) == [b"t2", b"t3", b"t4"]
    requeued = json.loads(client.lindex(priority_lists("m.slow")[3], 0))
    assert requeued["headers"]["id"] == "orphan" and requeued["headers"]["redelivered"] is True
    assert holdings.give_back_orphans(client, older_than_s=30, now=now) == []  # once
