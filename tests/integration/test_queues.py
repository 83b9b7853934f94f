"""Priorities across a backlog (FIFO within a level), and two workers sharing one model queue."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from app.broker.layout import model_queue
from app.celery_app import transport_options
from app.signature import decode_tensor
from bench.models import add_one

pytestmark = pytest.mark.integration
X = np.zeros((1, 4), dtype=np.float32)


def mixed_backlog(client, per_level: int = 6) -> list[tuple[int, int, object]]:
    """(level, submission index, handle) of requests to ``add`` sent at shuffled levels, in submission order."""
    levels = [p for p in range(10) for _ in range(per_level)]
    random.Random(7).shuffle(levels)
    return [(p, i, client.infer("add", {"x": X}, priority=p)) for i, p in enumerate(levels)]


def test_the_broker_hands_out_a_backlog_by_level_and_in_submission_order_within_a_level(
    settings, client, register, tmp_path
):
    # Given a backlog at shuffled levels on real Redis, with no worker consuming
    register("add", add_one(tmp_path / "add.onnx"))
    sent = mixed_backlog(client)
    # When it is popped the way a worker's kombu channel pops (highest level first, the end of each list)
    from kombu import Connection

    popped = []
    with Connection(settings.redis_url, transport_options=transport_options(settings)) as conn:
        while (message := conn.default_channel.basic_get(model_queue("add"), no_ack=True)) is not None:
            popped.append(message.headers["id"])
    # Then every request comes out once: level 0 first, and within each level in the order it was submitted
    expected = [h.id for _, _, h in sorted(sent, key=lambda s: (s[0], s[1]))]
    assert popped == expected


def test_backlog_of_mixed_priorities_is_served_highest_first_and_fifo_within_a_level(
    client, fleet, register, done_order, tmp_path
):
    # Given a backlog queued while no replica consumes the model's queue
    register("add", add_one(tmp_path / "add.onnx"))
    sent = mixed_backlog(client)
    # When a worker (solo pool, one message at a time) loads the model and starts consuming
    fleet.worker(0, "w0@test")
    client.load("add").wait()
    for _, _, handle in sent:
        handle.wait(timeout_s=120)
    # Then it served the backlog in priority order (0 first), and each level in submission order
    served = [(p, i) for p, i, _ in done_order(sent, key=lambda s: s[2])]
    assert served == sorted(served), served


def test_two_workers_share_a_model_queue(client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    a = client.load("add", worker="w0@test").wait()
    b = client.load("add", worker="w1@test").wait()
    assert a["replica"] != b["replica"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    handles = [client.infer("add", {"x": x + i}) for i in range(60)]
    answers = [h.wait(timeout_s=120) for h in handles]
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(decode_tensor(answer["outputs"][0]), x + i + 1)
    by_worker = Counter(a["parameters"]["worker"] for a in answers)
    assert set(by_worker) == {"w0@test", "w1@test"}, by_worker


def test_load_goes_to_the_device_with_most_free_memory_and_refuses_what_fits_nowhere(client, fleet, register, tmp_path):
    from app.errors import InsufficientMemory

    path = add_one(tmp_path / "add.onnx")
    register("big", path, mem_bytes=1536 * 1024**2)
    register("small", path, mem_bytes=256 * 1024**2)
    register("huge", path, mem_bytes=3 * 1024**3)
    fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    big = client.load("big").wait()
    small = client.load("small").wait()
    assert small["worker"] != big["worker"]  # the other device had more free memory
    with pytest.raises(InsufficientMemory, match="needs 3.00 GiB, which fits on no device"):
        client.load("huge")
