"""Placement solver: a fleet snapshot in, a target placement and routing out. Pure: no Celery, database or I/O.

Small fleets get the exact MILP (`beat.problem`). Large ones (more than `EXACT_MAX_PAIRS` model-device pairs) get
what measured best on 2 cores: prune each model to a few candidate devices, solve the LP relaxation, fix the
replicas it puts above `FIX_ABOVE` where the incumbent has them too, and solve the rest as a MILP; repeat around
the better incumbent while that gains and time is left (up to `MAX_FIX_ROUNDS`; later rounds re-solve the LP as
if the incumbent were loaded, `_proximity_round`). Either way the current placement is scored and handed over as
the incumbent; moves that do not raise the objective are put back (`_revert_needless_moves`); and a plan that
moves replicas is taken only when its gain beats the amortised migration cost plus the hysteresis margin
(`Snapshot.hysteresis`, `_prefer_current`). HiGHS (highspy, arrays) is the solver; CBC through PuLP is the
fallback; the demand greedy is the last resort.

Why rounds: a single time-limited fixing round left 1-2.5% of the LP bound on the table at 200 x 16 to 2000 x 256,
and the next beat round's warm re-solve picked it up by moving 10-18% of the replicas with no demand change at all.
With the proximity round inside the cold solve's budget the gap is 0.9-1.2% and that re-solve moves (almost)
nothing. Tried and dropped (2 cores, shared): rounding the LP's values above 0.9 and filling greedily as a first
incumbent (the LP puts the cold tail at 1 and the popular models fractional: 912 against the greedy's 1526 at
1000 x 64); fixing to 0 where LP and incumbent agree on 0 (the sub-MILP still timed out and found less).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np

from app import logs
from beat import milp_arrays
from beat.candidates import all_pairs, candidate_pairs, fairness_applies, screen_models
from beat.greedy import Placement, demand_greedy_placement, greedy_placements, proportional_rates
from beat.milp_arrays import RawSolution
from beat.problem import UNLOAD_COST_FRACTION, Problem, build_problem, spread_ok
from beat.snapshot import ModelDemand, Plan, PlanStatus, Snapshot

#: above this many (model, device) pairs the exact MILP does not finish in a beat period; prune and fix instead
EXACT_MAX_PAIRS = 1500
#: LP values above this are fixed to a replica before the MILP re-solve
FIX_ABOVE = 0.9
#: share of the time left that the LP relaxation may take on the large path
LP_TIME_SHARE = 0.6
#: seconds kept back for the routing LP that polishes the final placement
POLISH_RESERVE_S = 0.15
#: LP-fixing rounds on the large path: each fixes what the LP and the last round's incumbent agree on
MAX_FIX_ROUNDS = 4
#: share of the time left that a fixing round may take (the last one takes all of it)
ROUND_TIME_SHARE = 0.25
#: a round around the last result, with its own LP, runs only when the time left exceeds this many first-LP times
PROXIMITY_LP_FACTOR = 0.8
#: no new round starts with less time than this left
MIN_ROUND_S = 0.3
#: a round that gains less than this share of the objective ends the rounds
ROUND_MIN_GAIN = 1e-4

#: cards freed at once by the neighbourhood search, in the order tried, and its limits per neighbourhood
NEIGHBOURHOOD_SIZES = (1, 2, 3)
NEIGHBOURHOOD_TIME_S = 1.0
NEIGHBOURHOOD_GAP = 1e-4
MAX_NEIGHBOURHOOD_PASSES = 2
#: a MILP answer proven within this gap is not searched around
NEIGHBOURHOOD_SKIP_GAP = 1e-4
#: no neighbourhood starts with less time than this left
MIN_NEIGHBOURHOOD_S = 0.1

SolveFn = Callable[..., RawSolution | None]


def _promising_devices(problem: Problem, best: RawSolution) -> np.ndarray:
    """Devices by the unserved demand (weighted) of the models that could go on them and are not there yet, most
    first: where a freed card is most likely to take a model the plan leaves waiting."""
    served = np.bincount(problem.pair_model, weights=best.r, minlength=len(problem.models))
    unserved = np.maximum(0.0, problem.demand - served) * problem.weight
    absent = best.x < 0.5
    score = np.bincount(
        problem.pair_device, weights=unserved[problem.pair_model] * absent, minlength=len(problem.devices)
    )
    return np.argsort(-score, kind="stable")


log = logging.getLogger("maas.beat")


def solve(snapshot: Snapshot) -> Plan:
    """Target placement and routing for `snapshot`, within `snapshot.time_limit_s` of wall time."""
    started = time.perf_counter()
    models, infeasible = screen_models(snapshot)
    fairness = fairness_applies(snapshot, models)
    exact = len(models) * len(snapshot.devices) <= EXACT_MAX_PAIRS
    screened = replace(snapshot, models=models)
    greedies = greedy_placements(screened)
    union: dict[str, tuple[str, ...]] = {}
    for placement in greedies.values():
        for name, devices in placement.items():
            union[name] = tuple(sorted(set(union.get(name, ())) | set(devices)))
    pairs = all_pairs(snapshot, models) if exact else candidate_pairs(snapshot, models, also=union)
    problem = build_problem(snapshot, models, pairs, fairness=fairness)
    build_s = time.perf_counter() - started
    deadline = started + snapshot.time_limit_s

    solve_fn, solver_name = _pick_solver()
    try:
        greedy_xs = [_placement_vector(problem, placement) for placement in greedies.values()]
        result = _solve_problem(problem, snapshot, solve_fn, exact=exact, deadline=deadline, greedy_xs=greedy_xs)
    except Exception as exc:  # a native solver crash must not stop beat; the greedy plan still serves
        # Logged with its traceback and carried in the plan: a bug here must not become a silent, permanent greedy.
        reason = f"{solver_name} raised {type(exc).__name__}: {exc}"
        logs.event(log, "solver_failed", logging.ERROR, exc_info=exc, solver=solver_name, reason=reason)
        return _greedy_plan(snapshot, models, infeasible, fairness, build_s, started, reason)
    if result is None:
        reason = f"{solver_name} found no placement within the {snapshot.time_limit_s:g}s time limit"
        logs.event(log, "solver_gave_up", logging.WARNING, solver=solver_name, reason=reason)
        return _greedy_plan(snapshot, models, infeasible, fairness, build_s, started, reason)
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
        bound=bound if np.isnan(bound) else max(bound, plan_sol.objective),
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
    problem: Problem,
    snapshot: Snapshot,
    solve_fn: SolveFn,
    *,
    exact: bool,
    deadline: float,
    greedy_xs: list[np.ndarray],
) -> tuple[RawSolution, float, PlanStatus] | None:
    """Best solution found, the bound it is measured against, and its status; None when no solver answered."""
    keep = _route(problem, solve_fn, problem.is_current.astype(float)) if problem.is_current.any() else None
    keep = keep if keep is not None and _feasible_start(problem, keep) else None
    greedies = [_drop_idle(problem, solve_fn, _route(problem, solve_fn, x)) for x in greedy_xs]
    # The incumbent: whichever of "keep as is" and the greedies scores best, migration cost included. Every later
    # step only replaces it with something that scores higher, so the plan is never worse than the best greedy.
    reference = _best_of(s for s in (keep, *greedies) if s is not None and _feasible_start(problem, s))
    if exact:
        return _solve_exact(problem, snapshot, solve_fn, reference, keep, deadline)

    lp_started = time.perf_counter()
    lp = solve_fn(problem, integer=False, time_limit_s=_left(deadline) * LP_TIME_SHARE)
    if lp is not None and lp.status is PlanStatus.INFEASIBLE:
        return lp, lp.bound, lp.status
    if lp is None:
        # The LP ran out of time: no bound and nothing to fix; the MILP still starts from the incumbent.
        zeros = np.zeros(problem.n_pairs)
        lp = RawSolution(zeros, zeros, 0.0, float("nan"), float("nan"), PlanStatus.FEASIBLE_TIME_LIMIT)
    lp_s = time.perf_counter() - lp_started
    best, proven = reference, False
    # A cold solve (nothing loaded) starts with a round around the best greedy, not with a fixing round on the
    # true LP: traced at 1000 x 64, that first round ran out of its time (0.9 s) with barely more than the greedy,
    # while a round around the greedy finished in 0.7 s with more; the time saved goes to the neighbourhood
    # search. A warm re-solve keeps the first round on the true LP: its incumbent may be a greedy, and rounds
    # around that would pull the plan towards it and away from what is loaded (the popular-large fleet's 30% shift
    # moved 13% of the replicas instead of 7%).
    cold = not problem.is_current.any()
    for round_no in range(MAX_FIX_ROUNDS):
        if best is not None and _left(deadline) < MIN_ROUND_S:
            break
        last = round_no == MAX_FIX_ROUNDS - 1
        # Round 0 of a re-solve fixes around the current / greedy incumbent with the true LP; the other rounds (and
        # a cold solve's first) search around the incumbent as a warm re-solve would (`_proximity_round`) when
        # another LP fits in the time left and no move budget is set.
        room = _left(deadline) > PROXIMITY_LP_FACTOR * lp_s + MIN_ROUND_S
        found = None
        if (round_no > 0 or cold) and best is not None and snapshot.move_budget is None and room:
            found = _proximity_round(problem, snapshot, solve_fn, best, deadline)
            if found is None and round_no == 0:
                # Its LP ran out of time: the true LP is solved already, so fix around it rather than stop here.
                found = _fix_and_solve(problem, snapshot, solve_fn, lp, best, deadline, last=last)
        else:
            found = _fix_and_solve(problem, snapshot, solve_fn, lp, best, deadline, last=last)
        if found is None or found.status is PlanStatus.INFEASIBLE:
            break
        improved = best is None or found.objective > best.objective + ROUND_MIN_GAIN * max(1.0, abs(best.objective))
        if best is None or found.objective > best.objective:
            best, proven = found, found.status is PlanStatus.OPTIMAL
        if not improved:
            break  # the neighbourhood of the incumbent is exhausted: more rounds would fix the same pairs again
    if best is None:
        return None
    status = PlanStatus.FEASIBLE_HEURISTIC if proven else PlanStatus.FEASIBLE_TIME_LIMIT
    best = _neighbourhood_search(problem, snapshot, solve_fn, best, deadline)
    best = _revert_needless_moves(problem, solve_fn, best, keep, deadline)
    return _prefer_current(problem, best, keep, lp.bound, status, snapshot.hysteresis)


def _solve_exact(
    problem: Problem,
    snapshot: Snapshot,
    solve_fn: SolveFn,
    reference: RawSolution | None,
    keep: RawSolution | None,
    deadline: float,
) -> tuple[RawSolution, float, PlanStatus] | None:
    """Small fleets: the whole MILP from the best incumbent, then the neighbourhood search if it was cut short."""
    best = solve_fn(problem, integer=True, time_limit_s=_left(deadline), gap=snapshot.gap, start=_start(reference))
    if best is None or best.status is PlanStatus.INFEASIBLE:
        return None if best is None else (best, best.bound, best.status)
    top = best if reference is None or best.objective >= reference.objective else reference
    # "Optimal" means within the requested gap (1% by default); the room left is often the whole gain over a good
    # greedy, and the neighbourhood search closes much of it in the time left.
    if _proven_gap(best) > NEIGHBOURHOOD_SKIP_GAP:
        top = _neighbourhood_search(problem, snapshot, solve_fn, top, deadline)
    best_x = _revert_needless_moves(problem, solve_fn, top, keep, deadline)
    return _prefer_current(problem, best_x, keep, best.bound, best.status, snapshot.hysteresis)


def _proven_gap(sol: RawSolution) -> float:
    if not np.isfinite(sol.bound):
        return float("inf")
    return max(0.0, sol.bound - sol.objective) / max(abs(sol.bound), 1e-9)


def _neighbourhood_search(
    problem: Problem, snapshot: Snapshot, solve_fn: SolveFn, best: RawSolution, deadline: float
) -> RawSolution:
    """Local search with the MILP as its move: free a few devices at a time, keep the rest as they are, re-solve.

    A neighbourhood of one card (every model that may go on it) finds "drop these cold replicas, load a hot
    model's next replica here"; two or three cards find swaps. Each neighbourhood is small and solves to
    optimality in a fraction of a second, so the moves found do not depend on how busy the machine is (the
    deadline only cuts the search short). Why it pays: on fleets of identical cards the full MILP is slowed by
    symmetry (any permutation of the cards is the same plan), which a handful of named cards does not have; and a
    time-limited MILP leaves local improvements behind. Each size makes one pass over the cards in order of promise
    (`_promising_devices`), then passes in a random order from a fixed seed until one gains nothing, then the next
    size (`NEIGHBOURHOOD_SIZES`).
    """
    n_devices = len(problem.devices)
    rng = np.random.default_rng(0)
    for size in NEIGHBOURHOOD_SIZES:
        if size > n_devices:
            break
        # A first pass over the most promising cards, then random passes: the first finds the waiting models a
        # time-limited MILP left out (the moves a no-drift re-solve made otherwise), the random ones the swaps on
        # cards that look alike (on a fleet of identical cards every card scores about the same).
        for pass_no in range(1 + MAX_NEIGHBOURHOOD_PASSES):
            gained = False
            shuffled = rng.permutation(n_devices)
            order = _promising_devices(problem, best) if pass_no == 0 else shuffled
            for start in range(0, n_devices - size + 1, size):
                if _left(deadline) < MIN_NEIGHBOURHOOD_S:
                    return best
                freed = np.isin(problem.pair_device, order[start : start + size])
                x_lb = np.where(freed, problem.x_lb, best.x)
                x_ub = np.where(freed, problem.x_ub, best.x)
                found = solve_fn(
                    problem.with_bounds(x_lb, x_ub),
                    integer=True,
                    time_limit_s=min(_left(deadline), NEIGHBOURHOOD_TIME_S),
                    gap=NEIGHBOURHOOD_GAP,
                    start=_start(best),
                )
                if found is None or found.status is PlanStatus.INFEASIBLE:
                    continue
                if found.objective > best.objective + ROUND_MIN_GAIN * max(1.0, abs(best.objective)):
                    best, gained = replace(found, status=best.status, bound=best.bound), True
            if not gained and pass_no > 0:
                break
    return best


def _proximity_round(
    problem: Problem, snapshot: Snapshot, solve_fn: SolveFn, incumbent: RawSolution, deadline: float
) -> RawSolution | None:
    """A fixing round around the incumbent as if it were the current placement; the result is scored for real.

    What a warm re-solve does, inside the cold solve's budget: charging migration relative to the incumbent makes
    the LP agree with it on far more replicas (455 fixed against 95 at 500 x 64), and the sub-MILP left finishes;
    it takes all the time left. Migration is charged against the incumbent only here: the result is re-routed and
    scored on the real problem before it competes.
    """
    on = incumbent.x > 0.5
    load = np.where(problem.is_current, problem.x_gain / UNLOAD_COST_FRACTION, -problem.x_gain)
    prox = replace(problem, x_gain=np.where(on, UNLOAD_COST_FRACTION * load, -load))
    lp = solve_fn(prox, integer=False, time_limit_s=_left(deadline) * LP_TIME_SHARE)
    if lp is None or lp.status is PlanStatus.INFEASIBLE:
        return None
    found = _fix_and_solve(prox, snapshot, solve_fn, lp, incumbent, deadline, last=True)
    if found is None or found.status is PlanStatus.INFEASIBLE:
        return found
    routed = _route(problem, solve_fn, found.x)
    return None if routed is None else replace(routed, status=found.status)


def _fix_and_solve(
    problem: Problem,
    snapshot: Snapshot,
    solve_fn: SolveFn,
    lp: RawSolution,
    incumbent: RawSolution | None,
    deadline: float,
    *,
    last: bool,
) -> RawSolution | None:
    """One LP-fixing round: fix the replicas the LP and the incumbent agree on, solve the rest as a MILP."""
    fixable = lp.x >= FIX_ABOVE
    if incumbent is not None:
        # Fix only where the LP and the incumbent agree, so the incumbent stays feasible for the re-solve.
        fixable &= incumbent.x > 0.5
    if snapshot.move_budget is not None:
        # A fixed new replica spends budget the MILP might need elsewhere; fix only what is already loaded.
        fixable &= problem.is_current
    # Several values of 0.9+ on one device can overflow its memory once rounded up: fix only what fits.
    fix = _round_lp(problem, np.where(fixable, lp.x, 0.0))
    fixed = problem.with_bounds(np.maximum(problem.x_lb, fix), problem.x_ub)
    # A round may take most of the time left, not all: a next round around a better incumbent fixes more pairs
    # and usually gains more than a long tail of this one.
    limit = _left(deadline) * (1.0 if last else ROUND_TIME_SHARE)
    return solve_fn(fixed, integer=True, time_limit_s=limit, gap=snapshot.gap, start=_start(incumbent))


def _best_of(solutions: Iterable[RawSolution | None]) -> RawSolution | None:
    found = [s for s in solutions if s is not None]
    return max(found, key=lambda s: s.objective) if found else None


def _prefer_current(
    problem: Problem,
    best: RawSolution,
    keep: RawSolution | None,
    bound: float,
    status: PlanStatus,
    hysteresis: float,
) -> tuple[RawSolution, float, PlanStatus]:
    """Keep the current placement unless the new one scores better by more than the hysteresis margin.

    Both objectives already charge the amortised migration cost of the moves. The margin comes on top: a share
    (`Snapshot.hysteresis`) of what the models whose replicas would change serve now, so a plan whose net gain is
    within the noise of those models' demand estimates does not reshuffle the fleet, while a model that gains a lot
    (or serves nothing now) still gets its replicas. Relative to the moved models, not the fleet, so a small
    model's real need is not drowned by a large fleet's total.
    """
    if keep is None or np.array_equal(best.x, keep.x):
        return best, bound, status
    moved_models = np.unique(problem.pair_model[(best.x > 0.5) != (keep.x > 0.5)])
    affected = np.isin(problem.pair_model, moved_models)
    affected_value = float(problem.weight[problem.pair_model[affected]] @ keep.r[affected])
    margin = max(1e-9 * max(1.0, abs(best.objective)), hysteresis * affected_value)
    if keep.objective >= best.objective - margin:
        return keep, bound, PlanStatus.KEPT_CURRENT
    return best, bound, status


def _revert_needless_moves(
    problem: Problem, solve_fn: SolveFn, best: RawSolution, keep: RawSolution | None, deadline: float
) -> RawSolution:
    """Put back, model by model, replicas whose move does not raise the objective; until the deadline.

    A MILP stopped at its gap (1% by default) or by its time limit may move models for nothing: at 3 devices,
    moving a cold model aside for a hot one's new replica instead of using the empty device scored 0.3% worse
    and still counted as optimal. Each revert is checked against memory and replica bounds and re-routed, and
    kept only if the objective (migration charge included) does not drop. Models whose served rate changed least
    go first: those are the likely needless moves. Stops `POLISH_RESERVE_S` before the deadline.
    """
    if keep is None or np.array_equal(best.x > 0.5, keep.x > 0.5):
        return best
    pm = problem.pair_model
    n_models = len(problem.models)
    changed = np.unique(pm[(best.x > 0.5) != (keep.x > 0.5)])
    served_change = np.abs(
        np.bincount(pm, weights=best.r, minlength=n_models) - np.bincount(pm, weights=keep.r, minlength=n_models)
    )
    for m in changed[np.argsort(served_change[changed], kind="stable")].tolist():
        if time.perf_counter() >= deadline - POLISH_RESERVE_S:
            break
        mine = pm == m
        x = np.where(mine, keep.x, best.x)
        if not _fits(problem, x):
            continue
        routed = _route(problem, solve_fn, x)
        if routed is not None and routed.objective >= best.objective - 1e-9 * max(1.0, abs(best.objective)):
            best = replace(routed, status=best.status, bound=best.bound)
    return best


def _drop_idle(problem: Problem, solve_fn: SolveFn, sol: RawSolution | None) -> RawSolution | None:
    """Without the replicas the routing leaves (almost) idle, when that scores higher: they pay a load for nothing.

    The greedies fill leftover memory with replicas the routing LP may or may not use; this takes back the unused.
    """
    if sol is None:
        return None
    idle = (sol.x > 0.5) & (sol.r <= 1e-9) & (problem.x_lb < 0.5)
    if not idle.any():
        return sol
    x = np.where(idle, 0.0, sol.x)
    if not _fits(problem, x):
        return sol
    routed = _route(problem, solve_fn, x)
    return routed if routed is not None and routed.objective > sol.objective else sol


def _fits(problem: Problem, x: np.ndarray) -> bool:
    """Memory, bounds and replica counts of a 0/1 placement over the problem's pairs (move budget: fewer moves)."""
    used = np.bincount(problem.pair_device, weights=problem.mem[problem.pair_model] * x, minlength=len(problem.devices))
    if np.any(used > problem.capacity * (1 + 1e-9)):
        return False
    routed_like = RawSolution(x=x, r=np.zeros_like(x), t=0.0, objective=0.0, bound=0.0, status=PlanStatus.OPTIMAL)
    return _feasible_start(problem, routed_like)


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.perf_counter() - POLISH_RESERVE_S)


def _route(problem: Problem, solve_fn: SolveFn, x: np.ndarray) -> RawSolution | None:
    """Best routing (and full objective) for a fixed 0/1 placement x over the problem's pairs."""
    on = x > 0.5
    # Solving over the placed pairs only: the zero columns would make the LP 5-10x slower for nothing.
    placed = problem.subset(on)
    sol = solve_fn(
        placed.with_bounds(np.ones(placed.n_pairs), np.ones(placed.n_pairs)), integer=False, time_limit_s=10.0
    )
    if sol is None or sol.status is PlanStatus.INFEASIBLE:
        return None
    r = np.zeros(problem.n_pairs)
    r[on] = sol.r
    return RawSolution(x=on.astype(float), r=r, t=sol.t, objective=sol.objective, bound=sol.bound, status=sol.status)


def _placement_vector(problem: Problem, placement: Placement) -> np.ndarray:
    """0/1 over the problem's pairs for a placement (pairs outside the problem are ignored)."""
    wanted = {(m, g) for m, devices in placement.items() for g in devices}
    return np.array(
        [
            (problem.models[m].name, problem.devices[g].id) in wanted
            for m, g in zip(problem.pair_model.tolist(), problem.pair_device.tolist(), strict=True)
        ],
        dtype=float,
    )


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
    return spread_ok(problem, x)


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
    gap = max(0.0, (bound - sol.objective) / max(abs(bound), 1e-9)) if np.isfinite(bound) else float("nan")
    return Plan(
        placement={name: tuple(devs) for name, devs in placement.items()},
        rates=rates,
        served_per_s=float(sol.r[sol.x > 0.5].sum()),
        objective=sol.objective,
        bound=bound,
        gap=gap,
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
        reason = f"{solver_name} found no routing for the placement"
        return _greedy_routed(snapshot, placement, infeasible, problem.fairness, build_s, started, reason=reason)
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
    reason: str,
) -> Plan:
    """The demand greedy's placement, routed by the LP when that works; ``reason`` says why the solver was not used."""
    placement = demand_greedy_placement(replace(snapshot, models=models))
    try:
        routed = route(snapshot, placement)
    except Exception as exc:  # as in solve: the greedy plan must come back whatever the solver does
        reason = f"{reason}; routing the greedy placement raised {type(exc).__name__}: {exc}"
        logs.event(log, "solver_failed", logging.ERROR, exc_info=exc, solver="route", reason=reason)
        return _greedy_routed(snapshot, placement, infeasible, fairness, build_s, started, reason=reason)
    return replace(
        routed,
        status=PlanStatus.FALLBACK_GREEDY,
        solver="greedy+" + routed.solver,
        build_s=build_s,
        solve_s=time.perf_counter() - started - build_s,
        bound=float("nan"),
        gap=float("nan"),
        fallback_reason=reason if not routed.fallback_reason else f"{reason}; {routed.fallback_reason}",
    )


def _greedy_routed(
    snapshot: Snapshot,
    placement: Placement,
    infeasible: list[tuple[str, str]],
    fairness: bool,
    build_s: float,
    started: float,
    status: PlanStatus = PlanStatus.FALLBACK_GREEDY,
    *,
    reason: str = "",
) -> Plan:
    """The placement with rates split in proportion to demand (no LP); ``reason`` says why it is a fallback."""
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
        fallback_reason=reason,
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
