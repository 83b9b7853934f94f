"""Solver: optimality on tiny fleets, constraints honoured, warm start, status reading, both constructions."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import numpy as np
import pulp
import pytest

import beat.solver as solver_mod
from beat import milp_arrays
from beat.candidates import all_pairs, fairness_applies, screen_models
from beat.fleetgen import GB, generate_fleet
from beat.milp_arrays import solve_highs, status_from_highs
from beat.milp_pulp import build_pulp_model, solve_cbc, status_from_pulp
from beat.problem import build_problem
from beat.snapshot import Device, ModelDemand, Plan, PlanStatus, Snapshot
from beat.solver import route, solve


def assert_valid(snapshot: Snapshot, plan: Plan) -> None:
    devices = {d.id: d for d in snapshot.devices}
    models = {m.name: m for m in snapshot.models}
    used = dict.fromkeys(devices, 0)
    busy = dict.fromkeys(devices, 0.0)
    for name, devs in plan.placement.items():
        assert len(set(devs)) == len(devs)
        for g in devs:
            used[g] += models[name].mem_bytes
    for (name, g), rate in plan.rates.items():
        assert g in plan.placement[name]
        busy[g] += rate * models[name].service_s / devices[g].speed
    for g, d in devices.items():
        assert used[g] <= d.mem_bytes
        assert busy[g] <= snapshot.rho + 1e-6
    for name, m in models.items():
        served = sum(r for (n, _), r in plan.rates.items() if n == name)
        assert served <= m.demand_per_s + 1e-6


def tiny(seed: int, n_models: int = 3, n_gpus: int = 2, **knobs) -> Snapshot:
    return generate_fleet(n_models, n_gpus, seed=seed, time_limit_s=5.0, gap=0.0, **knobs)


@pytest.mark.parametrize("seed", range(6))
def test_exact_solve_matches_brute_force(seed: int) -> None:
    # Given a fleet small enough to enumerate every placement, some replicas already loaded
    snapshot = tiny(seed)
    models = tuple(
        dataclasses.replace(m, current=(snapshot.devices[i % 2].id,)) if i == 0 else m
        for i, m in enumerate(snapshot.models)
    )
    snapshot = dataclasses.replace(snapshot, models=models)
    # When the solver runs, and every placement is scored by its best routing
    plan = solve(snapshot)
    names, ids = [m.name for m in snapshot.models], [d.id for d in snapshot.devices]
    best = -np.inf
    for bits in itertools.product((0, 1), repeat=len(names) * len(ids)):
        placement = {n: tuple(g for j, g in enumerate(ids) if bits[i * len(ids) + j]) for i, n in enumerate(names)}
        mem = {g: 0 for g in ids}
        for n, devs in placement.items():
            for g in devs:
                mem[g] += next(m.mem_bytes for m in snapshot.models if m.name == n)
        if all(mem[d.id] <= d.mem_bytes for d in snapshot.devices):
            best = max(best, route(snapshot, placement).objective)
    # Then it finds the best one
    assert plan.status is PlanStatus.OPTIMAL
    assert plan.objective == pytest.approx(best, rel=1e-6, abs=1e-6)
    assert_valid(snapshot, plan)


def test_model_larger_than_every_device_is_reported_and_the_rest_solved() -> None:
    devices = (Device("g0", 24 * GB), Device("g1", 80 * GB))
    models = (
        ModelDemand("huge", 120 * GB, demand_per_s=5.0, service_s=0.1),
        ModelDemand("small", 10 * GB, demand_per_s=5.0, service_s=0.1),
    )
    plan = solve(Snapshot(devices=devices, models=models))
    assert [name for name, _ in plan.infeasible_models] == ["huge"]
    assert "120.0 GB" in plan.infeasible_models[0][1]
    assert "huge" not in plan.placement
    assert plan.placement["small"]


@pytest.mark.parametrize(
    ("min_replicas", "max_replicas", "demand", "expect"),
    [
        (3, None, 0.0, 3),  # keep-warm replicas though nobody asks
        (0, 1, 1000.0, 1),  # demand wants all four devices, the cap says one
        (2, 2, 1000.0, 2),
    ],
)
def test_min_and_max_replicas(min_replicas: int, max_replicas: int | None, demand: float, expect: int) -> None:
    devices = tuple(Device(f"g{i}", 40 * GB) for i in range(4))
    model = ModelDemand("m", 10 * GB, demand, 0.1, min_replicas=min_replicas, max_replicas=max_replicas)
    plan = solve(Snapshot(devices=devices, models=(model,)))
    assert len(plan.placement.get("m", ())) == expect


def test_pinned_model_lands_on_its_device() -> None:
    devices = (Device("fast", 40 * GB, speed=1.0), Device("slow", 40 * GB, speed=0.2))
    models = (
        ModelDemand("a", 30 * GB, 100.0, 0.1, pinned=("slow",)),
        ModelDemand("b", 30 * GB, 1.0, 0.1),
    )
    plan = solve(Snapshot(devices=devices, models=models))
    assert "slow" in plan.placement["a"]  # pinned = must be there; more replicas elsewhere are fine


def test_pinned_to_unknown_device_is_reported() -> None:
    devices = (Device("g0", 40 * GB),)
    models = (ModelDemand("a", 1 * GB, 1.0, 0.1, pinned=("nope",)), ModelDemand("b", 1 * GB, 1.0, 0.1))
    plan = solve(Snapshot(devices=devices, models=models))
    assert plan.infeasible_models == [("a", "pinned to unknown device(s) nope")]
    assert plan.placement == {"b": ("g0",)}


@pytest.mark.parametrize("budget", [0, 1, 2])
def test_move_budget_is_respected(budget: int) -> None:
    # Given every model on the slow card while the fast ones stand empty
    devices = (Device("slow", 80 * GB, speed=0.1), Device("f1", 80 * GB), Device("f2", 80 * GB))
    models = tuple(ModelDemand(f"m{i}", 20 * GB, 10.0, 0.1, current=("slow",)) for i in range(3))
    snapshot = Snapshot(devices=devices, models=models, move_budget=budget)
    plan = solve(snapshot)
    before = {(m.name, "slow") for m in models}
    after = {(m, g) for m, devs in plan.placement.items() for g in devs}
    assert len(before ^ after) <= budget
    if budget == 2:
        assert len(before ^ after) == 2  # moving pays: budget used


def test_warm_start_keeps_placement_when_nothing_changed() -> None:
    snapshot = generate_fleet(30, 4, seed=3, time_limit_s=2.0)
    first = solve(snapshot)
    again = dataclasses.replace(
        snapshot,
        models=tuple(dataclasses.replace(m, current=first.placement.get(m.name, ())) for m in snapshot.models),
    )
    second = solve(again)
    assert second.placement == first.placement


def test_large_fleet_path_gives_valid_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solver_mod, "EXACT_MAX_PAIRS", 0)
    snapshot = generate_fleet(60, 8, seed=1, time_limit_s=2.0)
    plan = solve(snapshot)
    assert plan.status in (PlanStatus.FEASIBLE_HEURISTIC, PlanStatus.FEASIBLE_TIME_LIMIT)
    assert plan.solver == "highs+prune+lpfix"
    assert plan.objective <= plan.bound + 1e-6
    assert_valid(snapshot, plan)


def test_cbc_fallback_when_highspy_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(milp_arrays, "highspy", None)
    snapshot = tiny(0)
    plan = solve(snapshot)
    assert plan.solver == "cbc"
    assert plan.status is PlanStatus.OPTIMAL
    assert_valid(snapshot, plan)


def test_greedy_fallback_when_solvers_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(solver_mod, "_pick_solver", lambda: (broken, "broken"))
    snapshot = tiny(1, n_models=5)
    plan = solve(snapshot)
    assert plan.status is PlanStatus.FALLBACK_GREEDY
    assert plan.placement
    assert "broken raised RuntimeError: solver crashed" in plan.fallback_reason


def test_a_solver_bug_is_logged_with_its_traceback_and_named_in_the_plan(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def bug(*args, **kwargs):
        raise IndexError("index 7 is out of bounds for axis 0 with size 7")

    monkeypatch.setattr(solver_mod, "_solve_problem", bug)
    with caplog.at_level(logging.ERROR, "maas.beat"):
        plan = solve(tiny(2, n_models=4))
    assert plan.status is PlanStatus.FALLBACK_GREEDY
    assert plan.fallback_reason.endswith("raised IndexError: index 7 is out of bounds for axis 0 with size 7")
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "solver_failed"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], IndexError)


def test_a_solver_that_finds_nothing_says_so_in_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solver_mod, "_solve_problem", lambda *args, **kwargs: None)
    plan = solve(tiny(3))
    assert plan.status is PlanStatus.FALLBACK_GREEDY
    assert "found no placement within the 5s time limit" in plan.fallback_reason


def test_a_solved_plan_has_no_fallback_reason() -> None:
    assert solve(tiny(0)).fallback_reason == ""


@pytest.mark.parametrize(
    ("model_status", "has_solution", "expect"),
    [
        ("kOptimal", True, PlanStatus.OPTIMAL),
        ("kTimeLimit", True, PlanStatus.FEASIBLE_TIME_LIMIT),
        ("kTimeLimit", False, None),
        ("kInterrupt", True, PlanStatus.FEASIBLE_TIME_LIMIT),
        ("kInfeasible", False, PlanStatus.INFEASIBLE),
        ("kUnboundedOrInfeasible", False, None),
        ("kSolveError", False, None),
    ],
)
def test_status_from_highs(model_status: str, has_solution: bool, expect: PlanStatus | None) -> None:
    assert status_from_highs(model_status, has_solution) is expect


@pytest.mark.parametrize(
    ("status", "sol_status", "expect"),
    [
        (pulp.LpStatusOptimal, pulp.LpSolutionOptimal, PlanStatus.OPTIMAL),
        # CBC stopped by the time limit says "Optimal" with an integer-feasible solution: not optimal
        (pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible, PlanStatus.FEASIBLE_TIME_LIMIT),
        (pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound, None),
        (pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible, PlanStatus.INFEASIBLE),
    ],
)
def test_status_from_pulp(status: int, sol_status: int, expect: PlanStatus | None) -> None:
    assert status_from_pulp(status, sol_status) is expect


@pytest.mark.parametrize(
    ("seed", "fairness", "budget"), [(0, True, None), (1, False, None), (2, True, 2), (3, False, 1)]
)
def test_pulp_and_array_constructions_agree(seed: int, fairness: bool, budget: int | None) -> None:
    snapshot = generate_fleet(8, 3, seed=seed, contended=not fairness, move_budget=budget)
    models = tuple(
        dataclasses.replace(m, current=(snapshot.devices[i % 3].id,)) if i % 2 == 0 else m
        for i, m in enumerate(snapshot.models)
    )
    snapshot = dataclasses.replace(snapshot, models=models)
    problem = build_problem(snapshot, models, all_pairs(snapshot, models), fairness=fairness)
    highs = solve_highs(problem, integer=True, time_limit_s=10.0, gap=0.0)
    cbc = solve_cbc(problem, integer=True, time_limit_s=10.0, gap=0.0)
    assert highs is not None and cbc is not None
    assert highs.objective == pytest.approx(cbc.objective, rel=1e-6, abs=1e-6)
    _, x, r, _ = build_pulp_model(problem)
    assert len(x) == len(r) == problem.n_pairs


def test_fairness_dropped_when_memory_is_oversubscribed() -> None:
    devices = (Device("g0", 40 * GB),)
    fits = (ModelDemand("a", 10 * GB, 1.0, 0.1), ModelDemand("b", 10 * GB, 1.0, 0.1))
    too_many = (*fits, ModelDemand("c", 30 * GB, 1.0, 0.1))
    assert fairness_applies(Snapshot(devices=devices, models=fits), screen_models(Snapshot(devices, fits))[0])
    assert not fairness_applies(Snapshot(devices=devices, models=too_many), too_many)
