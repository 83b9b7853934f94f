"""Placement solver: a fleet snapshot in, a target placement and routing out. Pure: no Celery, database or I/O.

Small fleets get the exact MILP (`beat.problem`). Large ones (more than `EXACT_MAX_PAIRS` model-device pairs) get
what measured best on 2 cores: prune each model to a few candidate devices, solve the LP relaxation, fix the
replicas it puts above `FIX_ABOVE`, and solve the rest as a MILP for the time left. Either way the current
placement is scored and handed over as the incumbent, so a replica moves only when the gain beats its amortised
migration cost. HiGHS (highspy, arrays) is the solver; CBC through PuLP is the fallback; the demand greedy is the
last resort.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from beat import milp_arrays
from beat.candidates import all_pairs, candidate_pairs, fairness_applies, screen_models
from beat.greedy import Placement, demand_greedy_placement, proportional_rates
from beat.milp_arrays import RawSolution
from beat.problem import Problem, build_problem
from beat.snapshot import ModelDemand, Plan, PlanStatus, Snapshot

#: above this many (model, device) pairs the exact MILP does not finish in a beat period; prune and fix instead
EXACT_MAX_PAIRS = 1500
#: LP values above this are fixed to a replica before the MILP re-solve
FIX_ABOVE = 0.9
#: share of the time left that the LP relaxation may take on the large path
LP_TIME_SHARE = 0.5
#: seconds kept back for the routing LP that polishes the final placement
POLISH_RESERVE_S = 0.15

SolveFn = Callable[..., RawSolution | None]


def solve(snapshot: Snapshot) -> Plan:
    """Target placement and routing for `snapshot`, within `snapshot.time_limit_s` of wall time."""
    started = time.perf_counter()
    models, infeasible = screen_models(snapshot)
    fairness = fairness_applies(snapshot, models)
    exact = len(models) * len(snapshot.devices) <= EXACT_MAX_PAIRS
    pairs = all_pairs(snapshot, models) if exact else candidate_pairs(snapshot, models)
    problem = build_problem(snapshot, models, pairs, fairness=fairness)
    build_s = time.perf_counter() - started
    deadline = started + snapshot.time_limit_s

    solve_fn, solver_name = _pick_solver()
    try:
        result = _solve_problem(problem, snapshot, solve_fn, exact=exact, deadline=deadline)
    except Exception:  # noqa: BLE001 - a native solver crash must not stop beat; the greedy plan still serves
        result = None
    if result is None:
        return _greedy_plan(snapshot, models, infeasible, fairness, build_s, started)
    raw, bound, status = result
    if status is PlanStatus.INFEASIBLE:
        return _infeasible_plan(snapshot, models, infeasible, fairness, build_s, started, solver_name)
    plan_x, plan_sol = raw.x, raw
    polished = _route(problem, solve_fn, plan_x)
    if polished is not None and polished.objective >= raw.objective - 1e-9 * max(1.0, abs(raw.objective)):
        plan_sol = polished
    return _to_plan(
        problem,
        plan_sol,
        bound=max(bound, plan_sol.objective),
        status=status,
        solver=solver_name + ("" if exact else "+prune+lpfix"),
        build_s=build_s,
        solve_s=time.perf_counter() - started - build_s,
        infeasible=infeasible,
    )


def _pick_solver() -> tuple[SolveFn, str]:
    if milp_arrays.available():
        return milp_arrays.solve_highs, "highs"
    from beat.milp_pulp import solve_cbc

    return solve_cbc, "cbc"


def _solve_problem(
    problem: Problem, snapshot: Snapshot, solve_fn: SolveFn, *, exact: bool, deadline: float
) -> tuple[RawSolution, float, PlanStatus] | None:
    """Best solution found, the bound it is measured against, and its status; None when no solver answered."""
    keep = _route(problem, solve_fn, problem.is_current.astype(float)) if problem.is_current.any() else None
    if keep is not None and not _feasible_start(problem, keep):
        keep = None
    if exact:
        best = solve_fn(problem, integer=True, time_limit_s=_left(deadline), gap=snapshot.gap, start=_start(keep))
        if best is None or best.status is PlanStatus.INFEASIBLE:
            return None if best is None else (best, best.bound, best.status)
        return _prefer_current(best, keep, best.bound, best.status)

    lp = solve_fn(problem, integer=False, time_limit_s=_left(deadline) * LP_TIME_SHARE)
    if lp is None or lp.status is PlanStatus.INFEASIBLE:
        return None if lp is None else (lp, lp.bound, lp.status)
    fix = lp.x >= FIX_ABOVE
    if snapshot.move_budget is not None:
        # A fixed new replica spends budget the MILP might need elsewhere; fix only what is already loaded.
        fix &= problem.is_current
    fixed = problem.with_bounds(np.maximum(problem.x_lb, fix.astype(float)), problem.x_ub)
    rounded = _route(fixed, solve_fn, _round_lp(fixed, lp.x))
    starts = [s for s in (keep, rounded) if s is not None and _feasible_start(fixed, s)]
    start = max(starts, key=lambda s: s.objective) if starts else None
    best = solve_fn(fixed, integer=True, time_limit_s=_left(deadline), gap=snapshot.gap, start=_start(start))
    if best is None or best.status is PlanStatus.INFEASIBLE:
        best = start
    if best is None:
        return None
    status = PlanStatus.FEASIBLE_TIME_LIMIT if best.status is not PlanStatus.OPTIMAL else PlanStatus.FEASIBLE_HEURISTIC
    return _prefer_current(best, keep, lp.bound, status)


def _prefer_current(
    best: RawSolution, keep: RawSolution | None, bound: float, status: PlanStatus
) -> tuple[RawSolution, float, PlanStatus]:
    """Keep the current placement unless the new one scores strictly better (no moves for a tie)."""
    if keep is None or np.array_equal(best.x, keep.x):
        return best, bound, status
    if keep.objective >= best.objective - 1e-9 * max(1.0, abs(best.objective)):
        return keep, bound, PlanStatus.KEPT_CURRENT
    return best, bound, status


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.perf_counter() - POLISH_RESERVE_S)


def _route(problem: Problem, solve_fn: SolveFn, x: np.ndarray) -> RawSolution | None:
    """Best routing (and full objective) for a fixed 0/1 placement x over the problem's pairs."""
    fixed = problem.with_bounds(x, x)
    sol = solve_fn(fixed, integer=False, time_limit_s=10.0)
    if sol is None or sol.status is PlanStatus.INFEASIBLE:
        return None
    return RawSolution(x=x.copy(), r=sol.r, t=sol.t, objective=sol.objective, bound=sol.bound, status=sol.status)


def _feasible_start(problem: Problem, sol: RawSolution) -> bool:
    """Whether a routed placement respects the bounds, replica counts and move budget of `problem`."""
    x = sol.x
    if np.any(x < problem.x_lb - 1e-9) or np.any(x > problem.x_ub + 1e-9):
        return False
    counts = np.bincount(problem.pair_model, weights=x, minlength=len(problem.models))
    if np.any(counts < problem.min_replicas - 1e-9) or np.any(counts > problem.max_replicas + 1e-9):
        return False
    if problem.move_budget is not None:
        moves = x[~problem.is_current].sum() + problem.n_current - x[problem.is_current].sum()
        if moves > problem.move_budget + 1e-9:
            return False
    return True


def _round_lp(problem: Problem, x_frac: np.ndarray) -> np.ndarray:
    """Round an LP solution: fixed pairs first, then pairs by LP value, while memory and max replicas allow."""
    free = problem.capacity.copy()
    count = np.zeros(len(problem.models))
    x = np.zeros(problem.n_pairs)
    order = np.lexsort((-x_frac, -problem.x_lb))
    for p in order.tolist():
        if problem.x_lb[p] < 0.5 and x_frac[p] <= 1e-6:
            break
        m, g = problem.pair_model[p], problem.pair_device[p]
        if free[g] >= problem.mem[m] and count[m] < problem.max_replicas[m]:
            x[p] = 1.0
            free[g] -= problem.mem[m]
            count[m] += 1
    return x


def _start(sol: RawSolution | None) -> np.ndarray | None:
    return None if sol is None else np.concatenate([sol.x, sol.r, [sol.t]])


def _to_plan(
    problem: Problem,
    sol: RawSolution,
    *,
    bound: float,
    status: PlanStatus,
    solver: str,
    build_s: float,
    solve_s: float,
    infeasible: list[tuple[str, str]],
) -> Plan:
    placement: dict[str, list[str]] = {}
    rates: dict[tuple[str, str], float] = {}
    for p in np.flatnonzero(sol.x > 0.5).tolist():
        name = problem.models[problem.pair_model[p]].name
        device = problem.devices[problem.pair_device[p]].id
        placement.setdefault(name, []).append(device)
        rates[(name, device)] = float(sol.r[p])
    gap = (bound - sol.objective) / max(abs(bound), 1e-9)
    return Plan(
        placement={name: tuple(devs) for name, devs in placement.items()},
        rates=rates,
        served_per_s=float(sol.r[sol.x > 0.5].sum()),
        objective=sol.objective,
        bound=bound,
        gap=max(0.0, gap),
        status=status,
        solver=solver,
        build_s=build_s,
        solve_s=solve_s,
        infeasible_models=infeasible,
        fairness=problem.fairness,
    )


def route(snapshot: Snapshot, placement: Placement) -> Plan:
    """Score a given placement: its best routing and the objective, e.g. for greedy baselines or "keep as is"."""
    started = time.perf_counter()
    models, infeasible = screen_models(snapshot)
    index = {d.id: i for i, d in enumerate(snapshot.devices)}
    pairs = [(mi, index[g]) for mi, m in enumerate(models) for g in placement.get(m.name, ()) if g in index]
    problem = build_problem(snapshot, models, pairs, fairness=fairness_applies(snapshot, models), fixed=True)
    # Scoring a placement, not choosing one: replica counts and the move budget are the chooser's business.
    problem = replace(
        problem,
        move_budget=None,
        min_replicas=np.zeros_like(problem.min_replicas),
        max_replicas=np.full_like(problem.max_replicas, np.inf),
    )
    solve_fn, solver_name = _pick_solver()
    sol = _route(problem, solve_fn, np.ones(problem.n_pairs))
    build_s = time.perf_counter() - started
    if sol is None:
        return _greedy_routed(snapshot, placement, infeasible, problem.fairness, build_s, started)
    return _to_plan(
        problem,
        sol,
        bound=sol.objective,
        status=sol.status,
        solver=solver_name,
        build_s=build_s,
        solve_s=time.perf_counter() - started - build_s,
        infeasible=infeasible,
    )


def _greedy_plan(
    snapshot: Snapshot,
    models: tuple[ModelDemand, ...],
    infeasible: list[tuple[str, str]],
    fairness: bool,
    build_s: float,
    started: float,
) -> Plan:
    solvable = Snapshot(devices=snapshot.devices, models=models, rho=snapshot.rho)
    return _greedy_routed(snapshot, demand_greedy_placement(solvable), infeasible, fairness, build_s, started)


def _greedy_routed(
    snapshot: Snapshot,
    placement: Placement,
    infeasible: list[tuple[str, str]],
    fairness: bool,
    build_s: float,
    started: float,
    status: PlanStatus = PlanStatus.FALLBACK_GREEDY,
) -> Plan:
    rates = proportional_rates(snapshot, placement)
    served = sum(rates.values())
    return Plan(
        placement=dict(placement),
        rates=rates,
        served_per_s=served,
        objective=served,
        bound=float("nan"),
        gap=float("nan"),
        status=status,
        solver="greedy",
        build_s=build_s,
        solve_s=time.perf_counter() - started - build_s,
        infeasible_models=infeasible,
        fairness=fairness,
    )


def _infeasible_plan(
    snapshot: Snapshot,
    models: tuple[ModelDemand, ...],
    infeasible: list[tuple[str, str]],
    fairness: bool,
    build_s: float,
    started: float,
    solver: str,
) -> Plan:
    """Pinned devices or min replicas cannot all be honoured: hand back the current placement, do not act."""
    current = {m.name: m.current for m in models if m.current}
    plan = _greedy_routed(snapshot, current, infeasible, fairness, build_s, started, PlanStatus.INFEASIBLE)
    return replace(plan, solver=solver)
