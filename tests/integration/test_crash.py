"""Workers die; nothing accepted is lost, and the database tells the truth afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from bench.models import add_one, mlp
from harness.fleet import wait_for

pytestmark = pytest.mark.integration

# Short enough for a test, longer than any load or request here: Redis redelivers what a dead worker held.
FAST_RECOVERY = {"MAAS_VISIBILITY_TIMEOUT_S": "6", "MAAS_LOAD_TIMEOUT_S": "5", "MAAS_REAP_PERIOD_S": "1"}


@pytest.fixture
def env(env):
    return {**env, **FAST_RECOVERY}


def test_sigkill_mid_burst_loses_no_request_and_the_replica_is_marked_failed(client, fleet, register, tmp_path):
    register("mlp", mlp(tmp_path / "mlp.onnx", width=256, layers=6))
    w0 = fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    fleet.beat()
    # Given a backlog queued before any replica consumes it, so the burst outlasts the time it takes to send
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, 256)).astype(np.float32) for _ in range(1000)]
    handles = [client.infer("mlp", {"x": x}, priority=i % 10) for i, x in enumerate(inputs)]
    # (explicit waits: the handles' default is MAAS_LOAD_TIMEOUT_S, kept short here for recovery's sake)
    client.load("mlp", worker="w0@test").wait(timeout_s=120)
    client.load("mlp", worker="w1@test").wait(timeout_s=120)
    # When one of the two replicas is SIGKILLed mid-burst: no warm shutdown, the message it was running stays
    # unacknowledged in Redis
    wait_for(lambda: sum(h.ready() for h in handles[::10]) >= 3, 60, "the burst to be under way", interval_s=0.02)
    w0.kill()
    assert sum(h.ready() for h in handles) < len(handles), "the burst finished before the kill; nothing was tested"

    # Then every accepted request is still answered
    answers = [h.wait(timeout_s=240) for h in handles]
    assert len(answers) == 1000 and all(a["outputs"][0]["shape"] == [2, 256] for a in answers)

    def w0_replica_failed():
        reps = {r["worker"]: r for r in client.replicas(include_terminal=True)}
        return reps["w0@test"]["state"] == "FAILED" and reps

    reps = wait_for(w0_replica_failed, 90, "beat to reap the dead worker")
    assert reps["w0@test"]["reason"].startswith("worker lost: no heartbeat from w0@test")
    assert reps["w1@test"]["state"] == "READY"
    status = {d["worker"]: d for d in client.devices()}
    assert status["w0@test"]["status"] == "lost" and status["w1@test"]["alive"]


def test_a_restarted_worker_reloads_and_resubscribes_what_the_database_says_it_holds(client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    w0 = fleet.worker(0, "w0@test")
    first = client.load("add").wait(timeout_s=120)
    w0.kill()
    x = np.zeros((1, 4), dtype=np.float32)
    handles = [client.infer("add", {"x": x}) for _ in range(20)]  # queued while nobody consumes

    fleet.worker(0, "w0@test")
    answers = [h.wait(timeout_s=120) for h in handles]
    assert all(a["parameters"]["worker"] == "w0@test" for a in answers)
    reps = sorted(client.replicas(include_terminal=True), key=lambda r: r["replica"])
    assert [(r["replica"], r["state"]) for r in reps] == [(first["replica"], "FAILED"), (reps[1]["replica"], "READY")]
    assert reps[0]["reason"] == "worker restarted: its in-memory copy was lost"
    by = [(e["replica"], e["to"], e["by"]) for e in client.history("add") if e["by"] == "recovery"]
    assert by == [(reps[0]["replica"], "FAILED", "recovery"), (reps[1]["replica"], "PENDING", "recovery")] + [
        (reps[1]["replica"], s, "recovery") for s in ("LOADING", "READY")
    ]
