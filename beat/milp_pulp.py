"""The placement MILP written with PuLP: the formulation to read and extend, and the CBC fallback.

`build_pulp_model` is the readable statement of `beat.problem` (see its docstring for the maths). Building it is
slow at scale (seconds at 500 x 64), so the solver's fast path passes the same model to HiGHS as arrays
(`beat.milp_arrays`); a unit test keeps the two constructions in step. Change both together.
"""

from __future__ import annotations

import logging

import numpy as np
import pulp

from app import logs
from beat.milp_arrays import RawSolution
from beat.problem import Problem, evaluate_objective, spread_rows
from beat.snapshot import PlanStatus

log = logging.getLogger("maas.beat")


def build_pulp_model(
    problem: Problem, *, integer: bool = True
) -> tuple[pulp.LpProblem, list[pulp.LpVariable], list[pulp.LpVariable], pulp.LpVariable]:
    """The MILP as a PuLP problem; returns it with the x, r (per pair) and t variables."""
    cat = pulp.LpBinary if integer else pulp.LpContinuous
    prob = pulp.LpProblem("placement", pulp.LpMaximize)
    x, r = [], []
    # Variables are named by pair index: model and device names may hold characters LP files reject.
    for p in range(problem.n_pairs):
        x.append(_variable(prob, f"x_{p}", float(problem.x_lb[p]), float(problem.x_ub[p]), cat))
        r.append(_variable(prob, f"r_{p}", 0.0, None, pulp.LpContinuous))
    t = _variable(prob, "t", 0.0, 1.0 if problem.fairness else 0.0, pulp.LpContinuous)

    by_model: dict[int, list[int]] = {}
    by_device: dict[int, list[int]] = {}
    for p in range(problem.n_pairs):
        by_model.setdefault(int(problem.pair_model[p]), []).append(p)
        by_device.setdefault(int(problem.pair_device[p]), []).append(p)

    total_demand = float(problem.demand.sum())
    prob += (
        pulp.lpSum(float(problem.weight[problem.pair_model[p]]) * r[p] for p in range(problem.n_pairs))
        + problem.theta * total_demand * t
        + pulp.lpSum(float(problem.x_gain[p]) * x[p] for p in range(problem.n_pairs))
        + problem.objective_offset
    )
    for g, ps in by_device.items():
        prob += (
            pulp.lpSum(float(problem.mem[problem.pair_model[p]]) * x[p] for p in ps) <= float(problem.capacity[g]),
            f"memory_{g}",
        )
        prob += pulp.lpSum((1.0 / float(problem.mu[p])) * r[p] for p in ps) <= problem.rho, f"time_{g}"
    for p in range(problem.n_pairs):
        prob += r[p] <= float(problem.rate_cap[p]) * x[p], f"link_{p}"
    for mi, ps in by_model.items():
        served = pulp.lpSum(r[p] for p in ps)
        replicas = pulp.lpSum(x[p] for p in ps)
        prob += served <= float(problem.demand[mi]), f"demand_{mi}"
        if problem.fairness:
            prob += float(problem.demand[mi]) * t <= served, f"fair_{mi}"
        prob += replicas >= float(problem.min_replicas[mi]), f"min_rep_{mi}"
        if np.isfinite(problem.max_replicas[mi]):
            prob += replicas <= float(problem.max_replicas[mi]), f"max_rep_{mi}"
    if problem.move_budget is not None:
        loads = pulp.lpSum(x[p] for p in range(problem.n_pairs) if not problem.is_current[p])
        kept = pulp.lpSum(x[p] for p in range(problem.n_pairs) if problem.is_current[p])
        # loads + unloads <= B, with unloads = n_current - kept
        prob += loads - kept <= problem.move_budget - problem.n_current, "move_budget"
    for k, (pairs, coef) in enumerate(spread_rows(problem)):
        prob += (
            pulp.lpSum(float(c) * x[p] for p, c in zip(pairs.tolist(), coef.tolist(), strict=True)) <= 1.0,
            (f"spread_{k}"),
        )
    return prob, x, r, t


def _variable(prob: pulp.LpProblem, name: str, low: float, up: float | None, cat: str) -> pulp.LpVariable:
    # PuLP 3.3 deprecates LpVariable(...) in favour of prob.add_variable; older PuLP only has the former.
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


def status_from_pulp(status: int, sol_status: int) -> PlanStatus | None:
    """Map PuLP's (status, sol_status) to a plan status; None = no usable answer.

    CBC stopped by its time limit with an incumbent reports status Optimal but sol_status IntegerFeasible.
    """
    if status == pulp.LpStatusInfeasible or sol_status == pulp.LpSolutionInfeasible:
        return PlanStatus.INFEASIBLE
    if sol_status == pulp.LpSolutionOptimal:
        return PlanStatus.OPTIMAL
    if sol_status == pulp.LpSolutionIntegerFeasible:
        return PlanStatus.FEASIBLE_TIME_LIMIT
    return None


def solve_cbc(
    problem: Problem,
    *,
    integer: bool,
    time_limit_s: float,
    gap: float = 0.01,
    start: np.ndarray | None = None,
) -> RawSolution | None:
    """Solve with PuLP's bundled CBC; same contract as `beat.milp_arrays.solve_highs`."""
    prob, x, r, t = build_pulp_model(problem, integer=integer)
    warm = start is not None and integer
    if start is not None and integer:
        for var, value in zip([*x, *r, t], start.tolist(), strict=True):
            var.setInitialValue(value)
    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, round(time_limit_s)), gapRel=gap, warmStart=warm)
    try:
        prob.solve(solver)
    except pulp.PulpSolverError as exc:  # CBC missing or crashed: no answer; the solver falls back to the greedy
        logs.event(log, "cbc_failed", logging.WARNING, exc_info=exc, reason=str(exc))
        return None
    status = status_from_pulp(prob.status, prob.sol_status)
    if status is None or status is PlanStatus.INFEASIBLE:
        if status is None:
            return None
        zeros = np.zeros(problem.n_pairs)
        return RawSolution(x=zeros, r=zeros, t=0.0, objective=float("-inf"), bound=float("-inf"), status=status)
    xv = np.array([v.value() or 0.0 for v in x])
    xv = np.round(xv) if integer else xv
    rv = np.maximum(np.array([v.value() or 0.0 for v in r]), 0.0)
    tv = float(t.value() or 0.0)
    objective = evaluate_objective(problem, xv, rv, tv)
    return RawSolution(x=xv, r=rv, t=tv, objective=objective, bound=objective, status=status)
