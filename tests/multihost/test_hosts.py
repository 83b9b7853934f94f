"""A fleet across machines: workers on two hosts (network namespaces) serve one model through one Redis."""

from __future__ import annotations

import numpy as np
import pytest

from app.client import outputs_as_arrays
from bench.models import add_one

pytestmark = [pytest.mark.integration, pytest.mark.multihost]


def test_workers_on_two_hosts_register_their_host_and_both_serve(client, hosts, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    a, b = hosts.host("a"), hosts.host("b")
    workers = [hosts.worker(a, 0), hosts.worker(b, 0)]
    hosts.wait_ready(workers)

    devices = {d["worker"]: d for d in client.devices()}
    assert {w: (d["host"], d["alive"]) for w, d in devices.items()} == {
        "gpu0@a": ("a", True),
        "gpu0@b": ("b", True),
    }
    for worker in ("gpu0@a", "gpu0@b"):
        client.load("add", worker=worker).wait(timeout_s=120)
    x = np.zeros((1, 4), dtype=np.float32)
    handles = [client.infer("add", {"x": x}) for _ in range(40)]
    answers = [h.wait(timeout_s=120) for h in handles]
    assert all(np.allclose(outputs_as_arrays(a)["y"], 1.0) for a in answers)
    assert {a["parameters"]["worker"] for a in answers} == {"gpu0@a", "gpu0@b"}
