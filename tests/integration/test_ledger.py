"""A request lost between kombu's BRPOP and its unacked record is found by the sweep and served."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from app.celery_app import create_app
from app.queues import priority_lists
from app.signature import decode_tensor
from beat.recovery import recover
from bench.models import add_one

pytestmark = pytest.mark.integration


@pytest.fixture
def env(env):
    return {**env, "MAAS_REAP_PERIOD_S": "0.5"}


def test_a_request_popped_by_a_worker_that_died_before_recording_it_is_sent_again(
    settings, client, fleet, register, tmp_path
):
    register("add", add_one(tmp_path / "add.onnx"))
    x = np.zeros((1, 4), dtype=np.float32)
    handle = client.infer("add", {"x": x}, priority=3)
    kept = client.infer("add", {"x": x}, priority=3)
    r = redis.Redis.from_url(settings.redis_url)
    # Simulate the window: the message leaves its list (BRPOP) and its popper dies before kombu records it.
    (key,) = [k for k in priority_lists("m.add") if r.llen(k)]
    assert r.rpop(key) is not None and r.llen(key) == 1
    app = create_app(settings)

    time.sleep(1.1)  # older than the sweep's minimum age (2 x MAAS_REAP_PERIOD_S)
    first = recover(app)
    assert first == {"done": 0, "resent": 0, "suspect": 1}  # the queued one is present; the lost one only suspect
    second = recover(app)
    assert second["resent"] == 1 and r.llen(key) == 2

    fleet.worker(0, "w0@test")
    client.load("add").wait()
    assert decode_tensor(handle.wait(timeout_s=30)["outputs"][0]).reshape(-1).tolist() == [1.0] * 4
    assert decode_tensor(kept.wait(timeout_s=30)["outputs"][0]).reshape(-1).tolist() == [1.0] * 4
    time.sleep(1.1)
    assert recover(app)["done"] == 2 and r.zcard("maas:ledger:since") == 0
