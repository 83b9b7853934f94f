"""Priorities across a backlog, and two workers sharing one model queue."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import numpy as np
import pytest
from celery.result import AsyncResult

from app.signature import decode_tensor
from bench.models import add_one

pytestmark = pytest.mark.integration


def test_backlog_of_mixed_priorities_is_served_highest_first(settings, client, fleet, register, tmp_path):
    # Given a backlog queued while no replica consumes the model's queue
    register("add", add_one(tmp_path / "add.onnx"))
    x = np.zeros((1, 4), dtype=np.float32)
    priorities = [p for p in range(10) for _ in range(6)]
    random.Random(7).shuffle(priorities)
    handles = [(p, client.infer("add", {"x": x}, priority=p)) for p in priorities]
    # When a worker loads the model and starts consuming
    fleet.worker(0, "w0@test")
    client.load("add").wait()
    for _, handle in handles:
        handle.wait(timeout_s=60)
    # Then it served the backlog in priority order (0 first), FIFO within a level
    done_at = {h.id: dt.datetime.fromisoformat(str(AsyncResult(h.id, app=client.app).date_done)) for _, h in handles}
    served = [p for p, h in sorted(handles, key=lambda ph: done_at[ph[1].id])]
    assert served == sorted(priorities), served


def test_two_workers_share_a_model_queue(settings, client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    a = client.load("add", worker="w0@test").wait()
    b = client.load("add", worker="w1@test").wait()
    assert a["replica"] != b["replica"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    handles = [client.infer("add", {"x": x + i}) for i in range(60)]
    answers = [h.wait(timeout_s=60) for h in handles]
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(decode_tensor(answer["outputs"][0]), x + i + 1)
    by_worker = Counter(a["parameters"]["worker"] for a in answers)
    assert set(by_worker) == {"w0@test", "w1@test"}, by_worker


def test_load_goes_to_the_device_with_most_free_memory_and_refuses_what_fits_nowhere(settings, client, fleet, tmp_path):
    from app import registry
    from app.artifacts import LocalArtifactStore
    from app.db.session import session_scope
    from app.errors import InsufficientMemory

    path = add_one(tmp_path / "add.onnx")
    store = LocalArtifactStore(settings.artifact_dir, settings.max_artifact_bytes)
    with session_scope(settings.sqlalchemy_url) as session:
        registry.register(session, store, "big", path, mem_bytes=1536 * 1024**2)
        registry.register(session, store, "small", path, mem_bytes=256 * 1024**2)
        registry.register(session, store, "huge", path, mem_bytes=3 * 1024**3)
    fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    big = client.load("big").wait()
    small = client.load("small").wait()
    assert small["worker"] != big["worker"]  # the other device had more free memory
    with pytest.raises(InsufficientMemory, match="needs 3.00 GiB, which fits on no device"):
        client.load("huge")
