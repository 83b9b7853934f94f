"""A request lost between kombu's BRPOP and its unacked record is found by the sweep and served."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from app.broker.layout import model_queue, priority_lists
from app.broker.queues import depth_by_priority
from app.celery_app import create_app
from app.signature import decode_tensor
from beat.recovery import recover
from bench.models import add_one
from harness.fleet import wait_for, wait_past

pytestmark = pytest.mark.integration
X = np.zeros((1, 4), dtype=np.float32)


@pytest.fixture
def env(env):
    return {**env, "MAAS_REAP_PERIOD_S": "0.5"}


def lose_one(r: redis.Redis, queue: str) -> None:
    """Simulate the window: a message leaves its list (BRPOP) and its popper dies before kombu records it."""
    (key,) = [k for k in priority_lists(queue) if r.llen(k)]
    assert r.rpop(key) is not None


def test_a_request_popped_by_a_worker_that_died_before_recording_it_is_sent_again(
    settings, client, fleet, register, tmp_path
):
    register("add", add_one(tmp_path / "add.onnx"))
    handle = client.infer("add", {"x": X}, priority=3)
    kept = client.infer("add", {"x": X}, priority=3)
    r = redis.Redis.from_url(settings.redis_url)
    (key,) = [k for k in priority_lists("m.add") if r.llen(k)]
    lose_one(r, "m.add")
    assert r.llen(key) == 1
    app = create_app(settings)

    # Entries count only once older than the sweep's minimum age: the first sweep that finds a suspect
    first = wait_for(lambda: (v := recover(app))["suspect"] and v, 60, "a sweep to find the lost one", interval_s=0.2)
    assert first == {"done": 0, "resent": 0, "suspect": 1}  # the queued one is present; the lost one only suspect
    second = recover(app)
    assert second["resent"] == 1 and r.llen(key) == 2

    fleet.worker(0, "w0@test")
    client.load("add").wait()
    assert decode_tensor(handle.wait(timeout_s=60)["outputs"][0]).reshape(-1).tolist() == [1.0] * 4
    assert decode_tensor(kept.wait(timeout_s=60)["outputs"][0]).reshape(-1).tolist() == [1.0] * 4
    done = []

    def all_forgotten() -> bool:  # once old enough, both answered requests leave the ledger
        done.append(recover(app)["done"])
        return sum(done) == 2

    wait_for(all_forgotten, 60, "the sweep to forget both answered requests", interval_s=0.2)
    assert r.zcard("maas:ledger:since") == 0


@pytest.mark.parametrize(
    "mention",
    [
        # kombu sends the body base64-encoded, so an id in the arguments is hidden from a text search today...
        "args",
        # ...but a header of the message's own that holds an "id" field is plain JSON, and is read as its id.
        "nested_header",
    ],
)
def test_an_id_mentioned_by_another_queued_message_does_not_count_as_present(
    settings, client, register, tmp_path, mention
):
    """The sweep reads a queued message's task id from its ``id`` header only.

    Another message that merely mentions a lost request's id (in its arguments, or in a header of its own with an
    ``"id"`` field) must not make the sweep believe the lost request is still queued: it would never be resent, and
    its client would wait until it timed out.
    """
    register("add", add_one(tmp_path / "add.onnx"))
    r = redis.Redis.from_url(settings.redis_url)
    # Given two accepted requests lost in the window, the first one named by another message still queued
    named = client.infer("add", {"x": X}, priority=3)
    lose_one(r, "m.add")
    unnamed = client.infer("add", {"x": X}, priority=3)
    lose_one(r, "m.add")
    client.app.send_task(
        "maas.infer",
        args=["add", None, [{"id": named.id}] if mention == "args" else []],
        headers={"maas_trace": {"id": named.id}} if mention == "nested_header" else {},
        queue=model_queue("add"),
        priority=3,
    )
    assert unnamed.id != named.id and sum(depth_by_priority(r, "m.add")) == 1

    # When the sweep looks twice, once both are older than its minimum age (2 x MAAS_REAP_PERIOD_S)
    app = create_app(settings)
    wait_past(time.time() + 2 * settings.reap_period_s)
    first, second = recover(app), recover(app)

    # Then both lost requests are suspects, then resent: the named one too
    assert (first["suspect"], second["resent"]) == (2, 2), (first, second)
    assert sum(depth_by_priority(r, "m.add")) == 3
