"""Placement by measured speed per device class, on a real fleet: two workers whose virtual devices are of two classes.

`w-slow` labels its device class "slow" and emulates a card 30x slower (MAAS_VIRTUAL_SLOWDOWN: each execution is
stretched by sleeping); `w-fast` is class "fast" at CPU speed. Nothing declares which is faster: the allocator
learns it only from the service times the workers measure, per class.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bench.models import wide_mlp
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
SLOW, FAST = "w-slow@test", "w-fast@test"


@pytest.fixture
def env(env):
    return {
        **env,
        "MAAS_ALLOCATION": "true",
        "MAAS_ALLOCATION_PERIOD_S": "1",
        "MAAS_REAP_PERIOD_S": "1",
        "MAAS_VIRTUAL_DEVICES": "2x1GiB",
        "MAAS_RATE_HALF_LIFE_S": "5",
        "MAAS_SOLVER_TIME_LIMIT_S": "2",
        "MAAS_VISIBILITY_TIMEOUT_S": "30",
        "MAAS_LOAD_TIMEOUT_S": "20",
    }


def ready_on(client, model: str) -> set[str]:
    return {r["worker"] for r in client.replicas() if r["model"] == model and r["state"] == "READY"}


def measured_on_both_classes(client, configure, fleet, register, tmp_path, x) -> None:
    """Model "m" served on the fast class, then moved to the slow one and served there: both classes measured."""
    register("m", wide_mlp(tmp_path / "m.onnx"), mem_bytes=64 * 1024**2, service_ms=5.0)
    configure("m", max_replicas=1, keep_warm=True, pinned=[FAST])
    fleet.worker(0, SLOW, MAAS_VIRTUAL_DEVICE_CLASS="slow", MAAS_VIRTUAL_SLOWDOWN="30")
    fleet.worker(1, FAST, MAAS_VIRTUAL_DEVICE_CLASS="fast")
    fleet.beat()
    wait_for(lambda: ready_on(client, "m") == {FAST}, 120, "m placed on the pinned fast worker")
    for handle in [client.infer("m", {"x": x}) for _ in range(30)]:
        handle.wait(timeout_s=120)
    configure("m", pinned=[SLOW])
    wait_for(lambda: ready_on(client, "m") == {SLOW}, 120, "m moved to the pinned slow worker")
    answers = [h.wait(timeout_s=120) for h in [client.infer("m", {"x": x}) for _ in range(30)]]
    assert {a["parameters"]["worker"] for a in answers} == {SLOW}


def speeds(client) -> dict:
    from app.cli import _last_speeds

    return _last_speeds(client.settings)


def test_a_model_moves_to_the_class_measured_faster_for_it(client, configure, fleet, register, tmp_path) -> None:
    x = np.zeros((1, 16), dtype=np.float32)
    measured_on_both_classes(client, configure, fleet, register, tmp_path, x)
    # Free to go anywhere, with a backlog the slow class cannot drain: the allocator moves it to the fast class.
    configure("m", pinned=[])
    handles = [client.infer("m", {"x": x}) for _ in range(400)]
    wait_for(lambda: ready_on(client, "m") == {FAST}, 180, "m moved to the fast class by measured speed")
    answers = [h.wait(timeout_s=180) for h in handles]
    assert len(answers) == 400
    seen = speeds(client)["m"]["classes"]
    assert seen["virtual-slow"]["measured"] and seen["virtual-fast"]["measured"]
    assert seen["virtual-slow"]["service_ms"] > 5 * seen["virtual-fast"]["service_ms"]


def test_a_latency_objective_keeps_a_model_off_a_class_too_slow_for_it(
    client, configure, fleet, register, tmp_path, env
) -> None:
    x = np.zeros((1, 16), dtype=np.float32)
    measured_on_both_classes(client, configure, fleet, register, tmp_path, x)
    fast_ms = speeds(client)["m"]["classes"]["virtual-fast"]["service_ms"]
    slow_ms = speeds(client)["m"]["classes"]["virtual-slow"]["service_ms"]
    objective_ms = round((fast_ms * slow_ms) ** 0.5, 3)  # between the two measured times
    # No demand at all: only the objective says the slow class will not do.
    configure("m", pinned=[], p99_ms=objective_ms)
    wait_for(lambda: ready_on(client, "m") == {FAST}, 180, f"m moved off the slow class by its {objective_ms} ms p99")
    seen = speeds(client)["m"]
    assert seen["p99_ms"] == objective_ms
    assert not seen["classes"]["virtual-slow"]["meets_p99"] and seen["classes"]["virtual-fast"]["meets_p99"]

    shown = subprocess.run(
        [sys.executable, "-m", "app.cli", "allocation", "show"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f"m [p99 {objective_ms:g} ms]" in shown and "over p99" in shown

    # An objective no class can meet: the allocator names the model and why, and places nothing new.
    configure("m", p99_ms=fast_ms / 100)
    wait_for(
        lambda: "m: p99 objective" in (latest_reason(client) or ""), 120, "an allocation run naming m as unservable"
    )


def latest_reason(client) -> str | None:
    from sqlalchemy import select

    from app.db.schema import AllocationRun
    from app.db.session import session_scope

    with session_scope(client.settings.sqlalchemy_url) as session:
        run = session.scalars(select(AllocationRun).order_by(AllocationRun.id.desc()).limit(1)).first()
        return None if run is None else run.reason


def test_planned_demand_is_the_last_carried_out_runs_input(settings) -> None:
    """The solver's switch charge needs the demand the current placement was planned for: the last run that
    moved replicas (not a dry run, a failed one, or one that kept everything)."""
    from app.allocation_states import RunStatus
    from app.db.schema import AllocationRun
    from app.db.session import session_scope
    from beat.fleet_state import planned_demands

    def run(status: RunStatus, demand_per_s: float) -> AllocationRun:
        demand = {"m": {"rate_per_s": demand_per_s, "waiting": 0, "demand_per_s": demand_per_s}}
        return AllocationRun(status=status, reason="", solver="test", inputs={"demand": demand}, moves=[])

    with session_scope(settings.sqlalchemy_url) as session:
        assert planned_demands(session) == {}
        session.add(run(RunStatus.DONE, 4.0))
        session.flush()
        session.add(run(RunStatus.DRY_RUN, 40.0))
        session.add(run(RunStatus.FAILED, 400.0))
        session.flush()
        assert planned_demands(session) == {"m": 4.0}
        session.add(run(RunStatus.KEPT, 5.5))  # moved nothing: the placement was planned for 4.0
        session.flush()
        assert planned_demands(session) == {"m": 4.0}
        session.add(run(RunStatus.EXECUTING, 6.5))
        session.flush()
        assert planned_demands(session) == {"m": 6.5}
