"""The placement MILP as plain arrays, shared by the PuLP and the highspy constructions.

Variables (one "pair" p = a model m that may go on a device g):
    x_p in {0, 1}   a replica of m on g
    r_p >= 0        request rate of m served on g
    t in [0, 1]     share of every model's demand that is served at least (max-min fairness)

maximise   sum_p w_m r_p + theta * t * sum_m lambda_m + sum_p x_gain_p x_p + objective_offset
subject to memory       sum_{p on g} mem_m x_p <= C_g
           linking      r_p <= u_p x_p,  u_p = min(rho * mu_p, lambda_m)   (tighter than mu_p x_p, same optimum)
           time share   sum_{p on g} r_p / mu_p <= rho
           demand       sum_{p of m} r_p <= lambda_m
           fairness     lambda_m t <= sum_{p of m} r_p                      (only when `fairness`)
           replicas     min_m <= sum_{p of m} x_p <= max_m
           pinned       x_p = 1 (bounds)
           move budget  loads + unloads <= B
           host spread  n_mh - (K_mh - 1) * (sum_{p of m} x_p - n_mh) <= 1   for each model m and host h where
                        m has K_mh >= 2 candidate pairs on h and candidates on another host too; n_mh is the
                        replicas of m on h. With two or more replicas, at least one is on another host; a single
                        replica is free. Models pinned by the operator are exempt (the pins decide).

The migration term -(1/H)(load cost of new replicas + unload cost of dropped ones) is linear in x: a new pair
costs `load` when x_p = 1, a current pair costs `unload` when x_p = 0, i.e. unload * (1 - x_p), whose constant
goes to `objective_offset` and whose x part is a bonus for keeping the replica.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from beat.pairs import service_matrix
from beat.pairs import service_s as pair_service_s
from beat.snapshot import Device, ModelDemand, Snapshot

#: an unload is cheap, but the replica it drops may have to be loaded again; charge this share of a load
UNLOAD_COST_FRACTION = 0.2
#: keeps zero-demand replicas from being shuffled for nothing: every move costs at least this (objective units)
MOVE_COST_FLOOR = 1e-4


@dataclass(frozen=True)
class Problem:
    models: tuple[ModelDemand, ...]
    devices: tuple[Device, ...]
    pair_model: np.ndarray  # int index into models, sorted by model then device
    pair_device: np.ndarray  # int index into devices
    mu: np.ndarray  # per-replica max rate on that device, requests/s
    rate_cap: np.ndarray  # u_p
    x_gain: np.ndarray  # objective coefficient of x_p (migration)
    x_lb: np.ndarray  # float 0/1
    x_ub: np.ndarray
    is_current: np.ndarray  # bool
    pair_host: np.ndarray  # int index of the pair's device's host
    weight: np.ndarray  # per model
    demand: np.ndarray
    mem: np.ndarray
    capacity: np.ndarray  # per device
    min_replicas: np.ndarray
    spread: np.ndarray  # bool per model: its replicas must span two hosts (when it has two or more)
    max_replicas: np.ndarray  # inf when unbounded
    rho: float
    theta: float  # 0 when fairness is off
    fairness: bool
    move_budget: int | None
    n_current: int  # current replicas of these models, for the move-budget row
    objective_offset: float

    @property
    def n_pairs(self) -> int:
        return int(self.pair_model.size)

    def with_bounds(self, x_lb: np.ndarray, x_ub: np.ndarray) -> Problem:
        return replace(self, x_lb=x_lb, x_ub=x_ub)

    def subset(self, keep: np.ndarray) -> Problem:
        """Only the pairs in the boolean mask `keep`; the objective of any solution with x = 0 elsewhere is unchanged
        (a dropped current pair's unload cost already sits in the offset)."""
        pair_fields = (
            "pair_model",
            "pair_device",
            "mu",
            "rate_cap",
            "x_gain",
            "x_lb",
            "x_ub",
            "is_current",
            "pair_host",
        )
        return replace(self, **{name: getattr(self, name)[keep] for name in pair_fields})


def build_problem(
    snapshot: Snapshot,
    models: tuple[ModelDemand, ...],
    pairs: list[tuple[int, int]] | np.ndarray,
    *,
    fairness: bool,
    fixed: bool = False,
) -> Problem:
    """Arrays for `models` restricted to the candidate `pairs` (model index, device index).

    With `fixed` every listed pair is forced to 1: the problem left is the routing LP of that placement, and its
    objective is the plan's full objective (migration term included).
    """
    devices = snapshot.devices
    dev_index = {d.id: i for i, d in enumerate(devices)}
    pairs_arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((pairs_arr[:, 1], pairs_arr[:, 0]))
    pm, pg = pairs_arr[order, 0], pairs_arr[order, 1]

    weight = np.array([m.weight for m in models], dtype=float)
    demand = np.array([max(0.0, m.demand_per_s) for m in models], dtype=float)
    # Per pair, not per model and device separately: a class-measured service time overrides the speed factor.
    mu = 1.0 / service_matrix(snapshot, models)[pm, pg] if pm.size else np.zeros(0)
    rate_cap = np.minimum(snapshot.rho * mu, demand[pm])

    current = {(mi, dev_index[g]) for mi, m in enumerate(models) for g in m.current if g in dev_index}
    pinned = {(mi, dev_index[g]) for mi, m in enumerate(models) for g in m.pinned if g in dev_index}
    is_current = np.array([(a, b) in current for a, b in zip(pm.tolist(), pg.tolist(), strict=True)], dtype=bool)
    is_pinned = np.array([(a, b) in pinned for a, b in zip(pm.tolist(), pg.tolist(), strict=True)], dtype=bool)

    load_cost = np.array([m.load_cost_s for m in models], dtype=float)[pm]
    # A load stalls one replica's worth of serving for load_cost_s; amortised over H seconds of that replica.
    load = snapshot.migration_weight * weight[pm] * rate_cap * load_cost / snapshot.horizon_s
    load = np.maximum(load, MOVE_COST_FLOOR) if snapshot.migration_weight > 0 else load
    if current and snapshot.migration_weight > 0:
        # A re-solve: a new replica of a model whose demand has not changed must be worth a share of what it could
        # serve (Snapshot.switch_cost_share); one whose demand changed moves for any net gain.
        steady = np.array([demand_unchanged(snapshot, m) for m in models], dtype=bool)
        load = load + np.where(steady[pm], snapshot.migration_weight * snapshot.switch_cost_share, 0.0) * (
            weight[pm] * rate_cap
        )
    unload = UNLOAD_COST_FRACTION * load
    x_gain = np.where(is_current, unload, -load)
    # Dropped current replicas pay their unload cost, kept ones get it back through x_gain.
    offset = -float(unload[is_current].sum()) - _unload_cost_outside(snapshot, models, current, pm, pg)

    x_lb = np.where(is_pinned | fixed, 1.0, 0.0)
    x_ub = np.ones(pm.size)
    max_rep = np.array([np.inf if m.max_replicas is None else m.max_replicas for m in models], dtype=float)
    host_of = {h: i for i, h in enumerate(sorted({d.host for d in devices}))}
    device_host = np.array([host_of[d.host] for d in devices], dtype=np.int64)
    return Problem(
        models=models,
        devices=devices,
        pair_model=pm,
        pair_device=pg,
        mu=mu,
        rate_cap=rate_cap,
        x_gain=x_gain,
        x_lb=x_lb,
        x_ub=x_ub,
        is_current=is_current,
        pair_host=device_host[pg] if pg.size else np.zeros(0, dtype=np.int64),
        weight=weight,
        demand=demand,
        mem=np.array([m.mem_bytes for m in models], dtype=float),
        capacity=np.array([d.mem_bytes for d in devices], dtype=float),
        min_replicas=np.array([m.min_replicas for m in models], dtype=float),
        spread=np.array([not m.pinned for m in models], dtype=bool),
        max_replicas=max_rep,
        rho=snapshot.rho,
        theta=snapshot.fairness_weight if fairness else 0.0,
        fairness=fairness,
        move_budget=snapshot.move_budget,
        n_current=len(current),
        objective_offset=offset,
    )


def demand_unchanged(snapshot: Snapshot, model: ModelDemand) -> bool:
    """Whether `model`'s demand is within `Snapshot.demand_change_share` of what its placement was planned for.

    A model never planned for (None) counts as changed: its first replicas are a response to something new.
    """
    if model.planned_demand_per_s is None:
        return False
    planned, now = max(0.0, model.planned_demand_per_s), max(0.0, model.demand_per_s)
    return abs(now - planned) <= snapshot.demand_change_share * max(planned, now)


def _unload_cost_outside(
    snapshot: Snapshot,
    models: tuple[ModelDemand, ...],
    current: set[tuple[int, int]],
    pm: np.ndarray,
    pg: np.ndarray,
) -> float:
    """Unload cost of current replicas that are not candidate pairs (dropped for sure, e.g. in a routing LP)."""
    listed = set(zip(pm.tolist(), pg.tolist(), strict=True))
    outside = current - listed
    if not outside:
        return 0.0
    total = 0.0
    for mi, gi in outside:
        m = models[mi]
        cap = min(snapshot.rho / pair_service_s(m, snapshot.devices[gi]), max(0.0, m.demand_per_s))
        load = snapshot.migration_weight * m.weight * cap * m.load_cost_s / snapshot.horizon_s
        if snapshot.migration_weight > 0:
            load = max(load, MOVE_COST_FLOOR)
            if demand_unchanged(snapshot, m):
                load += snapshot.migration_weight * snapshot.switch_cost_share * m.weight * cap
        total += UNLOAD_COST_FRACTION * load
    return total


def spread_rows(problem: Problem) -> list[tuple[np.ndarray, np.ndarray]]:
    """The host-spread rows (see the module docstring) as (pair indices, coefficients), each row's sum <= 1.

    Computed from the pairs present, so a routing LP over a fixed placement on one host gets no row: it is the
    caller's placement, scored as it is.
    """
    rows = []
    starts = np.searchsorted(problem.pair_model, np.arange(len(problem.models) + 1))
    for m in np.flatnonzero(problem.spread).tolist():
        pairs = np.arange(starts[m], starts[m + 1])
        hosts = problem.pair_host[pairs]
        names, counts = np.unique(hosts, return_counts=True)
        if names.size < 2:
            continue
        for h, k in zip(names.tolist(), counts.tolist(), strict=True):
            if k >= 2:
                rows.append((pairs, np.where(hosts == h, 1.0, -(k - 1.0))))
    return rows


def spread_ok(problem: Problem, x: np.ndarray) -> bool:
    """Whether a 0/1 placement over the problem's pairs meets every host-spread row."""
    return all(float(coef @ x[pairs]) <= 1.0 + 1e-9 for pairs, coef in spread_rows(problem))


def evaluate_objective(problem: Problem, x: np.ndarray, r: np.ndarray, t: float) -> float:
    """The objective of a solution, computed the same way whichever solver produced it."""
    served_value = float(problem.weight[problem.pair_model] @ r)
    fair = problem.theta * t * float(problem.demand.sum())
    return served_value + fair + float(problem.x_gain @ x) + problem.objective_offset
