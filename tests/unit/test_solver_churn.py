"""Solver: hysteresis, LP-fixing rounds, re-solves never below "keep", LP method choice, fleet contention, bench."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import beat.solver as solver_mod
from beat import milp_arrays
from beat.candidates import all_pairs, screen_models
from beat.fleetgen import GB, contention, drifted, generate_fleet, snapshot_to_dict
from beat.greedy import demand_greedy_placement
from beat.milp_arrays import solve_highs
from beat.problem import build_problem
from beat.snapshot import Device, ModelDemand, PlanStatus, Snapshot
from beat.solver import route, solve


def swap_snapshot(hysteresis: float) -> Snapshot:
    # a (worth 5% more per request) sits on the slower card, b on the faster: swapping gains ~0.1%, cheap moves
    devices = (Device("g0", 40 * GB, speed=1.0), Device("g1", 40 * GB, speed=1.05))
    models = (
        ModelDemand("a", 30 * GB, 100.0, 0.1, weight=1.05, max_replicas=1, current=("g0",), load_cost_s=0.1),
        ModelDemand("b", 30 * GB, 100.0, 0.1, weight=1.0, max_replicas=1, current=("g1",), load_cost_s=0.1),
    )
    return Snapshot(devices=devices, models=models, hysteresis=hysteresis, gap=0.0)


def test_without_hysteresis_any_net_gain_moves() -> None:
    plan = solve(swap_snapshot(hysteresis=0.0))
    assert plan.placement == {"a": ("g1",), "b": ("g0",)}


def test_hysteresis_keeps_current_for_a_small_gain() -> None:
    snapshot = swap_snapshot(hysteresis=0.05)
    plan = solve(snapshot)
    assert plan.placement == {"a": ("g0",), "b": ("g1",)}
    assert plan.status is PlanStatus.KEPT_CURRENT
    assert plan.objective == pytest.approx(route(snapshot, {"a": ("g0",), "b": ("g1",)}).objective)


def test_hysteresis_does_not_block_a_model_that_serves_nothing_now() -> None:
    # c is new: nothing it serves now, so no margin; the room is there
    devices = (Device("g0", 40 * GB), Device("g1", 40 * GB))
    models = (
        ModelDemand("a", 30 * GB, 5.0, 0.1, current=("g0",)),
        ModelDemand("c", 1 * GB, 0.5, 0.1),
    )
    plan = solve(Snapshot(devices=devices, models=models, hysteresis=0.5))
    assert plan.placement["a"] == ("g0",)
    assert "c" in plan.placement


def test_hysteresis_lets_a_doubled_demand_get_its_replica() -> None:
    devices = tuple(Device(f"g{i}", 40 * GB) for i in range(3))
    models = (
        ModelDemand("hot", 10 * GB, 18.0, 0.1, current=("g0",)),  # was 9 req/s, one replica's worth
        ModelDemand("cold", 10 * GB, 1.0, 0.1, current=("g1",)),
    )
    # gap=0: at the default 1% MIP gap moving "cold" too (0.3% worse) counts as optimal
    plan = solve(Snapshot(devices=devices, models=models, gap=0.0))
    assert len(plan.placement["hot"]) == 2
    assert plan.placement["cold"] == ("g1",)


@pytest.fixture
def large_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solver_mod, "EXACT_MAX_PAIRS", 0)


@pytest.mark.usefixtures("large_path")
@pytest.mark.parametrize("seed", range(2))
def test_large_path_never_scores_below_the_greedy_incumbent(seed: int) -> None:
    snapshot = generate_fleet(60, 8, seed=seed, time_limit_s=1.0)
    plan = solve(snapshot)
    greedy = route(snapshot, demand_greedy_placement(snapshot))
    assert plan.objective >= greedy.objective - 1e-6 * abs(greedy.objective)
    assert plan.objective <= plan.bound + 1e-6


@pytest.mark.usefixtures("large_path")
def test_re_solve_after_drift_never_scores_below_keeping() -> None:
    snapshot = generate_fleet(60, 8, seed=2, time_limit_s=1.0)
    first = solve(snapshot)
    after = drifted(snapshot, first.placement, seed=7)
    again = solve(after)
    keep = route(after, first.placement)
    assert again.objective >= keep.objective - 1e-6 * abs(keep.objective)
    if again.placement != first.placement:
        assert again.status is not PlanStatus.KEPT_CURRENT


@pytest.mark.usefixtures("large_path")
def test_fixing_rounds_stop_when_a_round_gains_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def counting(problem, *, integer, time_limit_s, gap=0.01, start=None):
        if integer:
            calls.append(True)
        return solve_highs(problem, integer=integer, time_limit_s=time_limit_s, gap=gap, start=start)

    monkeypatch.setattr(solver_mod, "_pick_solver", lambda: (counting, "highs"))
    # Only the fixing rounds are counted here; the neighbourhood search after them has tests of its own.
    monkeypatch.setattr(solver_mod, "_neighbourhood_search", lambda problem, snapshot, solve_fn, best, deadline: best)
    snapshot = generate_fleet(40, 4, seed=0, time_limit_s=5.0)
    solve(snapshot)
    assert 1 <= len(calls) <= solver_mod.MAX_FIX_ROUNDS


def test_primal_simplex_and_interior_point_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = generate_fleet(30, 4, seed=4)
    models, _ = screen_models(snapshot)
    problem = build_problem(snapshot, models, all_pairs(snapshot, models), fairness=False)
    simplex = solve_highs(problem, integer=False, time_limit_s=10.0)
    monkeypatch.setattr(milp_arrays, "PRIMAL_SIMPLEX_MAX_PAIRS", 0)
    ipm = solve_highs(problem, integer=False, time_limit_s=10.0)
    assert simplex is not None and ipm is not None
    assert simplex.objective == pytest.approx(ipm.objective, rel=1e-6)


@pytest.mark.parametrize(("contended", "expect"), [(True, 1.0), (False, 0.5)])
def test_generated_fleet_fills_memory_as_defined(contended: bool, expect: float) -> None:
    figures = contention(generate_fleet(500, 64, seed=0, contended=contended))
    assert figures["mem_one_each"] == pytest.approx(expect, rel=0.01)
    assert figures["top_replicas"] > 2  # popular models need several replicas at this size
    assert figures["offered_work"] == pytest.approx(0.7)


BENCH_FIELDS = {
    "models",
    "gpus",
    "solve_s",
    "gap_lp",
    "served_vs_ffd",
    "served_vs_demand_greedy",
    "ceiling_vs_demand_greedy",
    "moved_frac",
    "moved_frac_nodrift",
    "served_vs_keep",
}


def test_bench_prints_one_json_line_per_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.solver import main

    assert main(["--sizes", "12x2,16x2", "--time-limit-s", "1", "--families", "none"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["models"], r["gpus"]) for r in rows] == [(12, 2), (16, 2)]
    for row in rows:
        assert set(row) >= BENCH_FIELDS
        assert row["served_vs_keep"] >= 1.0 - 1e-6
        assert row["ceiling_vs_demand_greedy"] >= row["served_vs_demand_greedy"] - 0.05


def test_bench_reads_a_fleet_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.solver import main

    snapshot = generate_fleet(10, 2, seed=5)
    models = tuple(dataclasses.replace(m, current=("g000",)) if i == 0 else m for i, m in enumerate(snapshot.models))
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(snapshot_to_dict(dataclasses.replace(snapshot, models=models))))
    assert main(["--fleet", str(path), "--time-limit-s", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["models"], row["gpus"]) == (10, 2)
    assert set(row) >= BENCH_FIELDS
    assert np.isfinite(row["solve_s"])


def test_needless_moves_are_put_back() -> None:
    # b moved from g1 to g2 for nothing (a MILP stopped at its gap may do this); a's new replica is a real gain
    devices = tuple(Device(f"g{i}", 40 * GB) for i in range(3))
    models = (
        ModelDemand("a", 10 * GB, 15.0, 0.1, current=("g0",)),
        ModelDemand("b", 10 * GB, 1.0, 0.1, current=("g1",)),
    )
    snapshot = Snapshot(devices=devices, models=models)
    problem = build_problem(snapshot, models, all_pairs(snapshot, models), fairness=False)
    keep = solver_mod._route(problem, solve_highs, problem.is_current.astype(float))
    pairs = list(zip(problem.pair_model.tolist(), problem.pair_device.tolist(), strict=True))
    moved = np.array([p in {(0, 0), (0, 1), (1, 2)} for p in pairs], dtype=float)
    best = solver_mod._route(problem, solve_highs, moved)
    assert keep is not None and best is not None
    fixed = solver_mod._revert_needless_moves(problem, solve_highs, best, keep, deadline=float("inf"))
    placed = {pairs[p] for p in np.flatnonzero(fixed.x > 0.5).tolist()}
    assert placed == {(0, 0), (0, 1), (1, 1)}
    assert fixed.objective >= best.objective


FAMILY_FIELDS = {
    "family",
    "served_vs_best_greedy",
    "gap_closed",
    "gap_closed_lp",
    "moved_frac_nodrift",
    "shift_gap_recovered",
    "shift_moved_frac",
    "repeat_moved_frac",
}


def test_bench_prints_one_json_line_per_family(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.solver import main

    argv = ["--sizes", "none", "--families", "many_small,popular_large", "--family-size", "30x4"]
    assert main([*argv, "--reference-milp-s", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["family"] for r in rows] == ["many_small", "popular_large"]
    for row in rows:
        assert set(row) >= FAMILY_FIELDS
        assert (row["models"], row["gpus"]) == (30, 4)
        assert row["served_vs_best_greedy"] >= 1.0 - 1e-6
        assert 0.0 <= row["shift_moved_frac"] <= 2.0
