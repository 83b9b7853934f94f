"""Dynamic batching on a real worker: each request its own answer, priorities kept, failures contained."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from app import errors
from app.broker.layout import model_queue
from app.signature import decode_tensor
from bench.models import wide_mlp
from harness.fleet import wait_past

pytestmark = pytest.mark.integration


def test_batched_requests_each_get_their_own_answer_in_priority_order(
    client, fleet, tmp_path, register, configure, done_order
):
    path = wide_mlp(tmp_path / "mlp.onnx", hidden=256, layers=3)
    register("mlp", path)
    configure("mlp", max_batch_size=8, max_queue_delay_ms=5)
    reference = ort.InferenceSession(str(path))
    rng = np.random.default_rng(3)

    # Given a backlog of 40 good requests at ten levels, plus bad ones the worker must refuse one by one
    good = []
    for i in range(40):
        x = rng.standard_normal((1 + i % 3, 16)).astype(np.float32)
        good.append((i % 10, x, client.infer("mlp", {"x": x}, priority=i % 10)))
    wrong_shape = client.app.send_task(
        "maas.infer",
        args=["mlp", None, [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]],
        queue=model_queue("mlp"),
        priority=0,
    )
    expired = client.infer("mlp", {"x": x}, priority=0, deadline_s=0.2)
    wait_past(time.time() + 0.2)  # later than its deadline, stamped when it was sent: it expires unserved

    # When a worker loads the model and serves the backlog in batches
    fleet.worker(0, "w0@test")
    client.load("mlp").wait()
    answers = [(level, x, h.wait(timeout_s=120)) for level, x, h in good]

    # Then every request got the output of its own input
    for _, x, answer in answers:
        (expected,) = reference.run(None, {"x": x})
        got = decode_tensor(answer["outputs"][0])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert max(a["parameters"].get("batch", 1) for _, _, a in answers) > 1, "nothing was batched"
    with pytest.raises(errors.InvalidInput, match="shape \\[1, 3\\]"):
        wrong_shape.get(timeout=60)
    with pytest.raises(errors.DeadlineExceeded):
        expired.wait(timeout_s=60)

    # And batches took the highest levels first: the first eight done are all above the last eight
    order = done_order(good, key=lambda g: g[2])
    assert max(level for level, _, _ in order[:8]) <= min(level for level, _, _ in order[-8:])
