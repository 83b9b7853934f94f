"""The allocation loop on a real fleet: three virtual devices, six models, beat re-solving every second."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import select

from app.db.schema import AllocationRun
from app.db.session import session_scope
from app.signature import decode_tensor
from bench.models import add_one
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
MODELS = [f"m{i}" for i in range(6)]
X = np.zeros((1, 4), dtype=np.float32)


@pytest.fixture
def env(env):
    return {
        **env,
        "MAAS_ALLOCATION": "true",
        "MAAS_ALLOCATION_PERIOD_S": "1",
        "MAAS_REAP_PERIOD_S": "1",
        "MAAS_VIRTUAL_DEVICES": "1GiB,2GiB,3GiB",
        "MAAS_RATE_HALF_LIFE_S": "5",
        "MAAS_SOLVER_TIME_LIMIT_S": "2",
        "MAAS_VISIBILITY_TIMEOUT_S": "8",
        "MAAS_LOAD_TIMEOUT_S": "6",
    }


def placement(client) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for r in client.replicas():
        if r["state"] == "READY":
            found.setdefault(r["model"], set()).add(r["worker"])
    return found


def last_run(settings) -> AllocationRun:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.scalars(select(AllocationRun).order_by(AllocationRun.id.desc())).first()


@pytest.fixture
def placed(settings, client, fleet, register, tmp_path):
    """Six models with different demand, placed by the allocator from zero and serving."""
    for i, name in enumerate(MODELS):
        register(name, add_one(tmp_path / f"{name}.onnx"), mem_bytes=(200 + 100 * i) * 1024**2)
    for i in range(3):
        fleet.worker(i, f"w{i}@test")
    fleet.beat()
    handles = [client.infer(name, {"x": X}) for i, name in enumerate(MODELS) for _ in range(5 + 10 * i)]
    for handle in handles:
        handle.wait(timeout_s=180)  # served only once the allocator placed a replica (scale from zero)
    wait_for(lambda: set(placement(client)) == set(MODELS), 90, "every model placed")
    yield fleet
    # Shown only when the test fails: what the allocator decided, run by run.
    with session_scope(settings.sqlalchemy_url) as session:
        for run in session.scalars(select(AllocationRun).order_by(AllocationRun.id)):
            moves = [(m["kind"], m["model"], m["device"], m["state"]) for m in run.moves]
            print(f"run {run.id} {run.status} {run.reason!r} demand={run.inputs.get('demand')} moves={moves}")


def test_after_a_solve_every_model_is_where_the_plan_says_and_serving(settings, client, placed):
    def settled():
        run = last_run(settings)
        return run is not None and run.status in ("kept", "done") and run

    run = wait_for(settled, 120, "an allocation run that finds nothing to move")
    target = {m: set(w) for m, w in run.inputs["target"].items()}
    assert {m: w for m, w in placement(client).items() if m in target} == target
    for name in MODELS:
        assert (
            decode_tensor(client.infer(name, {"x": X}).wait(timeout_s=60)["outputs"][0]).reshape(-1).tolist()
            == [1.0] * 4
        )
    # Device memory is respected, by declared figures where nothing was measured yet.
    for d in client.devices():
        assert d["used_bytes"] <= d["mem_bytes"]
    # Each load the allocator made is recorded as asked by its run.
    for name in MODELS:
        assert {e["by"] for e in client.history(name)} <= {f"allocation run {n}" for n in range(1, run.id + 1)}


def test_a_move_is_make_before_break_with_zero_failed_requests(client, placed, configure):
    old_worker = sorted(placement(client)["m5"])[0]
    new_worker = next(f"w{i}@test" for i in range(3) if f"w{i}@test" not in placement(client)["m5"])
    failures, answers, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                answers.append(client.infer("m5", {"x": X}).wait(timeout_s=60))
            except Exception as exc:  # every failure is the test's business
                failures.append(exc)

    def ended_on_old_worker() -> int:
        return sum(e["worker"] == old_worker and e["to"] in ("STOPPED", "FAILED") for e in client.history("m5"))

    ended_before = ended_on_old_worker()
    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        configure("m5", pinned=[new_worker], max_replicas=1)
        wait_for(lambda: placement(client).get("m5") == {new_worker}, 120, "m5 to move", interval_s=0.2)
        # Traffic goes on until the old replica is gone, so its drain and unload happen under load.
        wait_for(lambda: ended_on_old_worker() > ended_before, 120, f"m5 on {old_worker} to stop", interval_s=0.2)
        sent_at_stop = len(answers) + len(failures)
        wait_for(lambda: len(answers) + len(failures) > sent_at_stop, 60, "a request answered after the stop")
    finally:
        stop.set()
        sender.join(90)
    assert failures == [] and len(answers) > 10
    events = {(e["worker"], e["to"]): e["at"] for e in client.history("m5")}
    assert events[(new_worker, "READY")] < events[(old_worker, "DRAINING")]  # make before break


def test_a_killed_worker_gets_its_models_re_placed_and_their_waiting_requests_served(settings, client, placed):
    where = placement(client)
    victim = max((f"w{i}@test" for i in range(3)), key=lambda w: sum(ws == {w} for ws in where.values()))
    orphans = [m for m, workers in where.items() if workers == {victim}]
    assert orphans, f"no model placed on one worker only: {where}"
    next(p for p in placed.procs if p.name == victim).kill()
    handles = [client.infer(m, {"x": X}) for m in orphans for _ in range(5)]
    answers = [h.wait(timeout_s=180) for h in handles]
    assert all(a["parameters"]["worker"] != victim for a in answers)
    lost = [r for r in client.replicas(include_terminal=True) if r["worker"] == victim]
    assert lost and all(r["state"] == "FAILED" and r["reason"].startswith("worker lost") for r in lost)
