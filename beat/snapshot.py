"""The allocation core's input and output types: a fleet snapshot in, a placement plan out.

Pure data: nothing here touches Celery, the database or a GPU. Beat fills a `Snapshot` from the database and
NVML, `beat.solver.solve` turns it into a `Plan`, `beat.planner.plan_moves` turns the plan into ordered moves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PlanStatus(enum.StrEnum):
    """How the plan was obtained; anything but INFEASIBLE carries a usable placement."""

    OPTIMAL = "optimal"  # the exact MILP, solved to the requested gap
    FEASIBLE_TIME_LIMIT = "feasible_time_limit"  # the time limit stopped the MILP; best incumbent returned
    FEASIBLE_HEURISTIC = "feasible_heuristic"  # large fleet: pruned candidates + LP fixing, sub-MILP finished
    KEPT_CURRENT = "kept_current"  # the current placement scored at least as well as anything found
    FALLBACK_GREEDY = "fallback_greedy"  # no MILP solver answered; demand-per-GB greedy used
    INFEASIBLE = "infeasible"  # pinned devices / min replicas cannot all be honoured


@dataclass(frozen=True)
class Device:
    """A GPU (or a virtual device such as a CPU pool) that replicas are loaded onto."""

    id: str
    mem_bytes: int
    #: relative throughput factor, 1.0 = the reference card the service times were measured on
    speed: float = 1.0
    kind: str = "gpu"  # "gpu" or "virtual"
    #: what per-class service times are keyed by: the GPU model ("NVIDIA H100 80GB HBM3"), "virtual" or
    #: "virtual-<label>"; empty = the device has no class of its own and only `speed` describes it
    device_class: str = ""
    #: the machine the device is in; a model with two or more replicas gets them on at least two machines when
    #: its candidate devices span two or more (a lost or cut-off machine then never takes all of a model's replicas)
    host: str = ""


@dataclass(frozen=True)
class ModelDemand:
    """One model as the solver sees it this round."""

    name: str
    mem_bytes: int
    #: arrival-rate EWMA plus the rate needed to drain the backlog
    demand_per_s: float
    #: seconds per request on a speed-1.0 device; a replica on device g serves at most speed_g / service_s
    service_s: float
    weight: float = 1.0
    min_replicas: int = 0
    max_replicas: int | None = None
    #: device ids the model must be on (operator pinning)
    pinned: tuple[str, ...] = ()
    #: device ids the model is loaded on now
    current: tuple[str, ...] = ()
    #: the demand the current replicas were placed for (the last plan's input); None = not known. A model whose
    #: demand is within `Snapshot.demand_change_share` of it counts as unchanged (see `Snapshot.switch_cost_share`)
    planned_demand_per_s: float | None = None
    #: seconds to load one replica; the migration cost is derived from it
    load_cost_s: float = 30.0
    #: seconds per request measured (or declared) on a class of device, by `Device.device_class`; it overrides
    #: `service_s / speed` on devices of that class: a 7B model is not "0.3x as fast" on a T4 as every other model
    service_s_by_class: dict[str, float] = field(default_factory=dict)
    #: latency objective: a device whose service time for this model exceeds it is no candidate; None = no limit
    p99_ms: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything one solver round needs; the knobs have defaults that suit beat's re-solve period."""

    devices: tuple[Device, ...]
    models: tuple[ModelDemand, ...]
    #: max time share of a device that replicas may use (headroom for bursts)
    rho: float = 0.9
    #: max loads + unloads this round; None = unlimited
    move_budget: int | None = None
    #: scales the migration term; 0 turns hysteresis off
    migration_weight: float = 1.0
    #: amortisation horizon H: a load's cost is spread over this many seconds of serving
    horizon_s: float = 600.0
    #: hysteresis: a plan that moves replicas must beat keeping the current placement (re-routed) by this share of
    #: what the models it moves serve now, on top of the amortised migration cost the objective already charges;
    #: 0 = move for any net gain
    hysteresis: float = 0.05
    #: stability: in a re-solve (replicas loaded), a new replica of a model whose demand has not changed must be
    #: worth this share of what it could serve, on top of the amortised load cost (its unload pays the unload
    #: fraction of that). Without it a re-solve with no change in demand moved 3-6% of the replicas at 1000 x 64
    #: for 0.3% more served: gains the time-limited cold solve had left, not answers to anything new. Models
    #: whose demand did change (or was never planned for) move for any net gain. 0 = off
    switch_cost_share: float = 0.1
    #: a model's demand counts as changed when it moved by more than this share since the last plan
    demand_change_share: float = 0.2
    #: theta, weight of the max-min fairness term (share of every model's demand served)
    fairness_weight: float = 0.05
    #: wall-clock budget for the whole solve (build, LP, MILP, polish)
    time_limit_s: float = 5.0
    #: relative MIP gap at which the solver may stop
    gap: float = 0.01


@dataclass(frozen=True)
class Plan:
    """Target placement and routing. `rates[(model, device)]` is the request rate to send to that replica."""

    placement: dict[str, tuple[str, ...]]
    rates: dict[tuple[str, str], float]
    served_per_s: float
    objective: float
    #: LP-relaxation bound of the problem the solver worked on (pruned candidates on large fleets)
    bound: float
    gap: float
    status: PlanStatus
    solver: str
    build_s: float
    solve_s: float
    #: models left out of the problem, with a reason a person can act on
    infeasible_models: list[tuple[str, str]] = field(default_factory=list)
    #: whether the max-min fairness term was used (dropped when memory is over-subscribed)
    fairness: bool = True
    #: why the plan fell back to the greedy placement (FALLBACK_GREEDY): the solver's exception, or that it found
    #: nothing in time; empty for a solved plan. The allocation run records it where the operator looks.
    fallback_reason: str = ""

    def replica_count(self) -> int:
        return sum(len(devices) for devices in self.placement.values())
