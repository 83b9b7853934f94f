"""The placement MILP passed to HiGHS as sparse arrays (highspy), and read back.

Same model as `beat.milp_pulp.build_pulp_model`, built without PuLP's per-term Python objects: PuLP takes seconds
to build 500 x 64 while this takes milliseconds. `tests/unit/test_solver.py` checks both give the same optimum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from beat.problem import Problem, evaluate_objective, spread_rows
from beat.snapshot import PlanStatus

try:
    import highspy
except ImportError:  # a dependency, but the solver still answers without it: CBC through PuLP (plan.solver says so)
    logging.getLogger("maas.beat").warning("highspy cannot be imported; solving with CBC", exc_info=True)
    highspy = None  # type: ignore[assignment]  # tests set it to None too; available() checks

#: HiGHS model statuses after which the incumbent is usable though not proven optimal
_STOPPED_EARLY = {
    "kTimeLimit",
    "kIterationLimit",
    "kSolutionLimit",
    "kInterrupt",
    "kHighsInterrupt",
    "kMemoryLimit",
    "kObjectiveBound",
    "kObjectiveTarget",
    "kUnknown",
}


#: LPs up to this many pairs go to primal simplex, larger ones to interior point (see `solve_highs`)
PRIMAL_SIMPLEX_MAX_PAIRS = 10_000


@dataclass(frozen=True)
class RawSolution:
    x: np.ndarray
    r: np.ndarray
    t: float
    objective: float
    #: dual bound of what was solved (the LP value for an LP)
    bound: float
    status: PlanStatus


def available() -> bool:
    return highspy is not None


def status_from_highs(model_status: str, has_solution: bool) -> PlanStatus | None:
    """Map HiGHS' own model status (enum name) to a plan status; None = no usable answer.

    Read this, not PuLP's status: PuLP's HiGHS class says "Optimal" when the time limit stopped the search.
    """
    if model_status == "kOptimal":
        return PlanStatus.OPTIMAL
    if model_status == "kInfeasible":
        return PlanStatus.INFEASIBLE
    if model_status in _STOPPED_EARLY and has_solution:
        return PlanStatus.FEASIBLE_TIME_LIMIT
    return None


def _triplets(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Constraint matrix as (row, col, value) plus row bounds; the row layout is the module docstring's order."""
    n_p, n_g, n_m = problem.n_pairs, len(problem.devices), len(problem.models)
    pm, pg, ar = problem.pair_model, problem.pair_device, np.arange(problem.n_pairs)
    x_col, r_col, t_col = ar, n_p + ar, 2 * n_p
    mem_row, link_row, time_row, dem_row = 0, n_g, n_g + n_p, 2 * n_g + n_p
    fair_row = dem_row + n_m
    rep_row = fair_row + (n_m if problem.fairness else 0)
    budget_row = rep_row + n_m
    spread_row = budget_row + (1 if problem.move_budget is not None else 0)
    spread = spread_rows(problem)
    n_rows = spread_row + len(spread)

    rows = [mem_row + pg, link_row + ar, rep_row + pm, link_row + ar, time_row + pg, dem_row + pm]
    cols = [x_col, x_col, x_col, r_col, r_col, r_col]
    # Memory rows are scaled to 1.0 per device: in bytes (~1e10) beside rates (~1) they wreck HiGHS' numerics.
    vals = [
        problem.mem[pm] / problem.capacity[pg],
        -problem.rate_cap,
        np.ones(n_p),
        np.ones(n_p),
        1.0 / problem.mu,
        np.ones(n_p),
    ]
    if problem.fairness:
        rows += [fair_row + pm, fair_row + np.arange(n_m)]
        cols += [r_col, np.full(n_m, t_col)]
        vals += [-np.ones(n_p), problem.demand]
    if problem.move_budget is not None:
        rows.append(np.full(n_p, budget_row))
        cols.append(x_col)
        vals.append(np.where(problem.is_current, -1.0, 1.0))
    for k, (pairs, coef) in enumerate(spread):
        rows.append(np.full(pairs.size, spread_row + k))
        cols.append(x_col[pairs])
        vals.append(coef)

    lower = np.full(n_rows, -np.inf)
    upper = np.zeros(n_rows)
    upper[mem_row:link_row] = 1.0
    upper[time_row:dem_row] = problem.rho
    upper[dem_row:fair_row] = problem.demand
    lower[rep_row:budget_row] = problem.min_replicas
    upper[rep_row:budget_row] = problem.max_replicas
    if problem.move_budget is not None:
        upper[budget_row] = problem.move_budget - problem.n_current
    upper[spread_row:] = 1.0
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    val = np.concatenate(vals)
    keep = val != 0.0
    return row[keep], col[keep], val[keep], lower, upper


def build_highs_lp(problem: Problem, *, integer: bool) -> highspy.HighsLp:
    """The model as a column-wise HighsLp, ready for `Highs.passModel`."""
    n_p = problem.n_pairs
    n_col = 2 * n_p + 1
    row, col, val, row_lower, row_upper = _triplets(problem)
    order = np.lexsort((row, col))
    row, col, val = row[order], col[order], val[order]

    lp = highspy.HighsLp()
    lp.num_col_ = n_col
    lp.num_row_ = row_lower.size
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.offset_ = problem.objective_offset
    lp.col_cost_ = np.concatenate(
        [problem.x_gain, problem.weight[problem.pair_model], [problem.theta * problem.demand.sum()]]
    )
    lp.col_lower_ = np.concatenate([problem.x_lb, np.zeros(n_p), [0.0]])
    lp.col_upper_ = np.concatenate([problem.x_ub, np.full(n_p, np.inf), [1.0 if problem.fairness else 0.0]])
    lp.row_lower_ = row_lower
    lp.row_upper_ = row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_ = n_col
    lp.a_matrix_.num_row_ = row_lower.size
    lp.a_matrix_.start_ = np.searchsorted(col, np.arange(n_col + 1)).astype(np.int32)
    lp.a_matrix_.index_ = row.astype(np.int32)
    lp.a_matrix_.value_ = val
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n_p + [highspy.HighsVarType.kContinuous] * (n_p + 1)
    return lp


def solve_highs(
    problem: Problem,
    *,
    integer: bool,
    time_limit_s: float,
    gap: float = 0.01,
    start: np.ndarray | None = None,
) -> RawSolution | None:
    """Solve with HiGHS; `start` (x, r, t stacked) is handed over as the incumbent. None = no usable answer."""
    h = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy's Python wrapper class has no annotations
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", max(0.05, float(time_limit_s)))
    h.setOptionValue("mip_rel_gap", float(gap))
    h.setOptionValue("random_seed", 0)
    if not integer:
        # Measured on the pruned LPs, 2 cores: primal simplex 0.4 s / 0.7-1.3 s at 3.4k / 6.8k pairs against 0.75 s /
        # 1.6-1.8 s for interior point and 0.8 s / 1.2-2.4 s for dual simplex; at 13.8k pairs interior point wins
        # (5-6 s against 10 s primal, 26 s dual).
        if problem.n_pairs <= PRIMAL_SIMPLEX_MAX_PAIRS:
            h.setOptionValue("solver", "simplex")
            h.setOptionValue("simplex_strategy", 4)  # primal
        else:
            h.setOptionValue("solver", "ipm")
    h.passModel(build_highs_lp(problem, integer=integer))
    if start is not None and integer:
        h.setSolution(start.size, np.arange(start.size, dtype=np.int32), start.astype(float))
    h.run()
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    status = status_from_highs(h.getModelStatus().name, has_solution)
    if status is None or status is PlanStatus.INFEASIBLE:
        return None if status is None else _empty(problem, status)
    values = np.asarray(h.getSolution().col_value)
    n_p = problem.n_pairs
    x = np.round(values[:n_p]) if integer else values[:n_p]
    r = np.maximum(values[n_p : 2 * n_p], 0.0)
    t = float(values[2 * n_p])
    bound = float(info.mip_dual_bound) if integer else float(info.objective_function_value)
    return RawSolution(x=x, r=r, t=t, objective=evaluate_objective(problem, x, r, t), bound=bound, status=status)


def _empty(problem: Problem, status: PlanStatus) -> RawSolution:
    zeros = np.zeros(problem.n_pairs)
    return RawSolution(x=zeros, r=zeros, t=0.0, objective=float("-inf"), bound=float("-inf"), status=status)
