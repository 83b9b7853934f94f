"""Host spread: a model with two or more replicas gets them on at least two hosts, in the MILP and the greedies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from beat.candidates import all_pairs
from beat.fleetgen import GB, generate_fleet
from beat.greedy import greedy_placements
from beat.milp_arrays import solve_highs
from beat.milp_pulp import solve_cbc
from beat.problem import build_problem, spread_ok, spread_rows
from beat.snapshot import Device, ModelDemand, Snapshot
from beat.solver import solve


def two_hosts(**knobs) -> Snapshot:
    # Host a's two cards are the fast ones: without the spread every replica would go there.
    devices = (
        Device("gpu0@a", 40 * GB, speed=2.0, host="a"),
        Device("gpu1@a", 40 * GB, speed=2.0, host="a"),
        Device("gpu0@b", 40 * GB, speed=1.0, host="b"),
        Device("gpu1@b", 40 * GB, speed=1.0, host="b"),
    )
    models = (
        ModelDemand("hot", 10 * GB, demand_per_s=30.0, service_s=0.05, min_replicas=2),
        ModelDemand("cold", 10 * GB, demand_per_s=0.1, service_s=0.05),
    )
    return Snapshot(devices, models, time_limit_s=5.0, gap=0.0, **knobs)


def hosts_of(snapshot: Snapshot, devices: tuple[str, ...]) -> set[str]:
    host = {d.id: d.host for d in snapshot.devices}
    return {host[g] for g in devices}


def test_the_solver_puts_a_models_replicas_on_two_hosts() -> None:
    snapshot = two_hosts()
    plan = solve(snapshot)
    assert len(plan.placement["hot"]) >= 2
    assert hosts_of(snapshot, plan.placement["hot"]) == {"a", "b"}


@pytest.mark.parametrize("name", ["ffd", "demand_per_byte", "demand_per_resource"])
def test_every_greedy_spreads_too(name: str) -> None:
    snapshot = two_hosts()
    placement = greedy_placements(snapshot)[name]
    assert hosts_of(snapshot, placement["hot"]) == {"a", "b"}


def test_one_host_or_a_single_replica_has_no_spread_row() -> None:
    one_host = dataclasses.replace(
        two_hosts(), devices=tuple(dataclasses.replace(d, host="") for d in two_hosts().devices)
    )
    models = one_host.models
    assert spread_rows(build_problem(one_host, models, all_pairs(one_host, models), fairness=True)) == []
    plan = solve(one_host)
    assert len(plan.placement["hot"]) >= 2  # min_replicas still honoured, all on the one host

    snapshot = two_hosts()
    problem = build_problem(snapshot, snapshot.models, all_pairs(snapshot, snapshot.models), fairness=True)
    single = np.zeros(problem.n_pairs)
    single[0] = 1.0
    assert spread_ok(problem, single)
    both_on_a = np.zeros(problem.n_pairs)
    both_on_a[:2] = 1.0  # hot's pairs come first, sorted by device: gpu0@a, gpu1@a
    assert not spread_ok(problem, both_on_a)


def test_a_pinned_model_is_exempt() -> None:
    snapshot = two_hosts()
    pinned = dataclasses.replace(snapshot.models[0], pinned=("gpu0@a", "gpu1@a"), min_replicas=0)
    snapshot = dataclasses.replace(snapshot, models=(pinned, snapshot.models[1]))
    plan = solve(snapshot)
    assert {"gpu0@a", "gpu1@a"} <= set(plan.placement["hot"])


@pytest.mark.parametrize("seed", range(3))
def test_pulp_and_array_constructions_agree_with_hosts(seed: int) -> None:
    snapshot = generate_fleet(6, 4, seed=seed)
    devices = tuple(dataclasses.replace(d, host="ab"[i % 2]) for i, d in enumerate(snapshot.devices))
    models = tuple(dataclasses.replace(m, min_replicas=2 if i % 2 else 0) for i, m in enumerate(snapshot.models))
    snapshot = dataclasses.replace(snapshot, devices=devices, models=models)
    problem = build_problem(snapshot, models, all_pairs(snapshot, models), fairness=False)
    assert spread_rows(problem)
    highs = solve_highs(problem, integer=True, time_limit_s=10.0, gap=0.0)
    cbc = solve_cbc(problem, integer=True, time_limit_s=10.0, gap=0.0)
    assert highs is not None and cbc is not None
    assert highs.objective == pytest.approx(cbc.objective, rel=1e-6, abs=1e-6)
    assert spread_ok(problem, highs.x) and spread_ok(problem, cbc.x)
