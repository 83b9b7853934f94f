"""Placement solver benchmark: `python -m bench.solver` (from the repository root). One JSON line per fleet size,
then one per realistic family.

Per size and round r (seed r): a seeded synthetic fleet (`beat.fleetgen`, contended unless --uncontended) is solved
cold by `beat.solver.solve`, the real path (screening, candidates, build, LP, LP-fixing MILP rounds, polish), with
the wall budget `time_limit_s` (below each target: 1.8 s for the 2 s target, 4.5 s for 5 s, 20 s for 30 s). Then
the same snapshot is re-solved twice from that placement, with the same budget: once unchanged (the control) and
once after every demand drifts by a uniform factor in [1 - d, 1 + d] (--drift d, 0.1; seed 1000 + r). Numbers
are medians over --rounds; strings and flags come from the first round.

Fields:
    models, gpus, contended, load_factor, time_limit_s, horizon_s, hysteresis, migration_weight, drift, rounds:
                    what was run (--fleet: models, gpus, fleet, rounds; the knobs are the file's)
    solve_s         wall time of the cold `solve()` (the time targets are on this)
    build_s         its screening + candidates + array build part
    gap_lp          (bound - objective) / bound of the cold plan, bound = LP relaxation of the full, unpruned problem
                    (`bound_kind` "full_lp"); above --full-bound-pairs model-device pairs that LP takes minutes, so
                    the pruned problem's LP bound is used ("pruned_lp": it ignores what pruning lost)
    served_frac     served / offered demand, cold plan
    served_vs_ffd   served by the cold plan / served by first-fit decreasing (one replica per model, largest
                    first), the FFD placement routed optimally by the same routing LP
    served_vs_demand_greedy  same against the demand-per-GB greedy (`beat.greedy.demand_greedy_placement`, which
                    already weighs device speed and time share when it picks a device), routed optimally
    greedy_served_frac       served / demand by that greedy
    served_vs_best_greedy, best_greedy, gap_closed_lp   against the best of every greedy baseline (see Families)
    ceiling_vs_demand_greedy  bound / the greedy's objective: no placement can beat the greedy by more than this
                    (objective units, same migration charge; with all weights 1 and no fairness term that is served
                    requests minus the amortised load cost)
    moved_frac      (loads + unloads) / replicas of the cold plan, after the drift: what the target limits. It
                    includes moves that only recover what the time-limited cold solve left on the table;
    moved_frac_nodrift  the control: the same re-solve with no drift. Moves there are not drift-induced, so
                    moved_frac - moved_frac_nodrift is roughly the drift's share
    served_vs_keep  after the drift: served by the re-solved plan / served by the old placement re-routed for the
                    new demand (`beat.solver.route`); >= 1 means moving did not cost service
    objective_vs_keep   same for the objective (migration charge included)
    resolve_s, resolve_nodrift_s   wall times of the two re-solves
    status, resolve_status         PlanStatus of the cold solve and of the drift re-solve
    replicas, fairness, infeasible_models  of the cold plan
    mem_one_each, mem_all_demand, top_replicas, multi_replica_models, offered_work  how contended the fleet is
                    (`beat.fleetgen.contention`)

Families (`beat.fleetgen.Family`, after the sizes; --families none skips them): realistic fleets with per-model x
per-class service times. Per family and round r (seed r) the cold solve runs with no migration charge (nothing is
loaded, so its figures are about what the plan serves), then re-solves run from that placement with the default
charge. Fields:
    served_vs_best_greedy   served by the plan / served by the best greedy (`beat.greedy.greedy_placements`: first
                    fit decreasing and the demand greedy with two scores, each routed by the same LP)
    objective_vs_best_greedy, best_greedy   the same on the objective, and which greedy was best
    gap_closed      (plan - best greedy) / (proven bound - best greedy) in objective units; the proven bound is the
                    lower of the LP relaxation and the dual bound of a long MILP (--reference-milp-s, all pairs);
                    1.0 when the best greedy is already within 0.1% of it (nothing measurable to close)
    gap_closed_lp   the same against the LP bound alone (where the LP is loose this understates the plan)
    lp_vs_best_greedy, proven_vs_best_greedy   the room there is: bound / best greedy
    repeat_moved_frac   moves between two cold solves of the same snapshot: run-to-run variance of the plan
    moved_frac_nodrift  re-solve with no change, from the plan
    shift_gap_recovered after 30% of the models swap popularity (`beat.fleetgen.reshuffled`): (served by the
                    re-solve - served by keeping the old placement) / (served by a fresh cold solve - keeping);
                    1.0 when keeping is within 0.1% of fresh
    shift_moved_frac, shift_served_vs_fresh, shift_resolve_s   its moves / replicas, served against fresh, time

--fleet PATH reads one snapshot from JSON instead of generating fleets (then models/gpus are its counts):
    {"devices": [{"id": "g0", "mem_bytes": 80000000000, "speed": 1.0, "kind": "gpu", "device_class": "h100-80"},
                 ...],
     "models": [{"name": "llama", "mem_bytes": 16000000000, "demand_per_s": 12.0, "service_s": 0.05,
                 "service_s_by_class": {"h100-80": 0.05, "t4-16": 0.31}, "p99_ms": 250.0,
                 "weight": 1.0, "min_replicas": 0, "max_replicas": null, "pinned": [], "current": [],
                 "load_cost_s": 30.0, "planned_demand_per_s": null}, ...],
     "rho": 0.9, "time_limit_s": 5.0, ...}          (any other `beat.snapshot.Snapshot` field, optional)
"service_s_by_class" gives a model's seconds per request on each device class, overriding service_s / speed on
devices of that class; "p99_ms" keeps the model off devices whose service time exceeds it;
"planned_demand_per_s" is the demand its "current" replicas were placed for (a re-solve charges switching only
for models whose demand has not moved from it: `Snapshot.switch_cost_share`).
Only "id"/"mem_bytes" per device and "name"/"mem_bytes"/"demand_per_s"/"service_s" per model are required;
`beat.fleetgen.snapshot_to_dict` writes this form. "current" is ignored for the cold solve's comparison baselines
but used by the solver (the cold solve is then a warm one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from beat import milp_arrays
from beat.candidates import all_pairs, fairness_applies, screen_models
from beat.fleetgen import Family, contention, drifted, generate_family, generate_fleet, reshuffled, snapshot_from_dict
from beat.greedy import demand_greedy_placement, ffd_placement, greedy_placements
from beat.milp_arrays import solve_highs
from beat.problem import build_problem
from beat.snapshot import Plan, Snapshot
from beat.solver import route, solve

DEFAULT_SIZES = "50x4,200x16,500x64,1000x64,2000x256"
#: above this many model-device pairs the full LP bound takes minutes on 2 cores (1000 x 64: ~40 s)
FULL_BOUND_PAIRS = 40_000


def time_limit_for(models: int, gpus: int) -> float:
    """The solver's wall budget per size, kept under the targets (2 s at 500 x 64, 5 s at 1000 x 64, 30 s at 2000 x
    256) by 10% or more: the solver stops its search at the budget, the final routing and Python around it add a
    little, and the 2 cores are shared."""
    pairs = models * gpus
    if pairs <= 32_000:
        return 1.8
    if pairs <= 64_000:
        return 4.5
    return 20.0


def full_lp_bound(snapshot: Snapshot, max_pairs: int) -> tuple[float | None, str]:
    models, _ = screen_models(snapshot)
    pairs = all_pairs(snapshot, models)
    if len(pairs) > max_pairs:
        return None, "pruned_lp"
    problem = build_problem(snapshot, models, pairs, fairness=fairness_applies(snapshot, models))
    sol = solve_highs(problem, integer=False, time_limit_s=300.0)
    return (None, "pruned_lp") if sol is None else (sol.objective, "full_lp")


def measure(snapshot: Snapshot, drift_seed: int, max_bound_pairs: int, drift: float = 0.1) -> dict[str, Any]:
    """All figures for one fleet and one round (see the module docstring)."""
    started = time.perf_counter()
    plan = solve(snapshot)
    solve_s = time.perf_counter() - started
    bound, bound_kind = full_lp_bound(snapshot, max_bound_pairs)
    bound = plan.bound if bound is None else bound
    ffd = route(snapshot, ffd_placement(snapshot))
    greedy = route(snapshot, demand_greedy_placement(snapshot))
    best_name, best = best_greedy(snapshot)
    demand = sum(max(0.0, m.demand_per_s) for m in snapshot.models)

    control = drifted(snapshot, plan.placement, seed=drift_seed, amount=0.0)
    started = time.perf_counter()
    replan_nodrift = solve(control)
    resolve_nodrift_s = time.perf_counter() - started

    after = drifted(snapshot, plan.placement, seed=drift_seed, amount=drift)
    started = time.perf_counter()
    replan = solve(after)
    resolve_s = time.perf_counter() - started
    keep = route(after, plan.placement)
    return {
        "solve_s": solve_s,
        "build_s": plan.build_s,
        "gap_lp": (bound - plan.objective) / abs(bound) if bound else 0.0,
        "bound_kind": bound_kind,
        "served_frac": plan.served_per_s / demand if demand else 1.0,
        "served_vs_ffd": plan.served_per_s / max(ffd.served_per_s, 1e-12),
        "served_vs_demand_greedy": plan.served_per_s / max(greedy.served_per_s, 1e-12),
        "greedy_served_frac": greedy.served_per_s / demand if demand else 1.0,
        "served_vs_best_greedy": plan.served_per_s / max(best.served_per_s, 1e-12),
        "best_greedy": best_name,
        "gap_closed_lp": gap_closed(plan.objective, best.objective, bound),
        "ceiling_vs_demand_greedy": bound / greedy.objective if greedy.objective > 0 else float("nan"),
        "moved_frac": moved_frac(plan.placement, replan.placement),
        "moved_frac_nodrift": moved_frac(plan.placement, replan_nodrift.placement),
        "served_vs_keep": replan.served_per_s / max(keep.served_per_s, 1e-12),
        "objective_vs_keep": replan.objective / keep.objective if keep.objective else 1.0,
        "resolve_s": resolve_s,
        "resolve_nodrift_s": resolve_nodrift_s,
        "status": str(plan.status),
        "resolve_status": str(replan.status),
        "replicas": plan.replica_count(),
        "fairness": plan.fairness,
        "infeasible_models": len(plan.infeasible_models),
        **contention(snapshot),
    }


#: wall budget of the cold solve on a family (the target is 5 s)
FAMILY_TIME_LIMIT_S = 4.5
#: how long the reference MILP may search for a tighter bound than the LP's (see `family_bound`)
REFERENCE_MILP_S = 30.0


def best_greedy(snapshot: Snapshot) -> tuple[str, Plan]:
    """The best-scoring greedy baseline (objective, then served), each routed by the same LP as the plans."""
    plans = {name: route(snapshot, placement) for name, placement in greedy_placements(snapshot).items()}
    name = max(plans, key=lambda n: (plans[n].objective, plans[n].served_per_s))
    return name, plans[name]


def family_bound(snapshot: Snapshot, incumbent: Plan, reference_milp_s: float) -> tuple[float, float]:
    """(LP bound, best proven bound): the LP relaxation of the full problem, and the lower of it and the dual bound a
    long MILP (all pairs, `REFERENCE_MILP_S`, from the plan) proves. Where the LP is loose (an integrality gap, not
    the solver's shortfall) only the second says how much room there really is."""
    models, _ = screen_models(snapshot)
    problem = build_problem(snapshot, models, all_pairs(snapshot, models), fairness=fairness_applies(snapshot, models))
    lp = solve_highs(problem, integer=False, time_limit_s=300.0)
    lp_bound = float("inf") if lp is None else lp.objective
    index = {
        (m.name, d.id): p
        for p, (m, d) in enumerate(
            (problem.models[a], problem.devices[b])
            for a, b in zip(problem.pair_model.tolist(), problem.pair_device.tolist(), strict=True)
        )
    }
    start_x = np.zeros(problem.n_pairs)
    for name, devices in incumbent.placement.items():
        for g in devices:
            if (name, g) in index:
                start_x[index[(name, g)]] = 1.0
    start_r = np.zeros(problem.n_pairs)
    for (name, g), rate in incumbent.rates.items():
        if (name, g) in index:
            start_r[index[(name, g)]] = rate
    milp = solve_highs(
        problem,
        integer=True,
        time_limit_s=reference_milp_s,
        gap=1e-4,
        start=np.concatenate([start_x, start_r, [0.0]]),
    )
    proven = lp_bound if milp is None else min(lp_bound, milp.bound)
    return lp_bound, max(proven, incumbent.objective)


#: a gap below this share of the bound is not measurable: the routing LP's own tolerances are of this order
NEGLIGIBLE_GAP = 1e-3


def gap_closed(plan: float, baseline: float, bound: float) -> float:
    """Share of the gap between the baseline and the bound that the plan closes; 1.0 when the baseline is already
    within `NEGLIGIBLE_GAP` of the bound (nothing left to close; the `*_vs_best_greedy` fields show the room)."""
    room = bound - baseline
    if room <= NEGLIGIBLE_GAP * max(1.0, abs(bound)):
        return 1.0
    return (plan - baseline) / room


def measure_family(
    family: Family, seed: int, size: tuple[int, int] = (0, 0), reference_milp_s: float = REFERENCE_MILP_S
) -> dict[str, Any]:
    """Figures for one realistic family and one seed (module docstring, "Families")."""
    cold = generate_family(
        family,
        seed=seed,
        n_models=size[0],
        n_gpus=size[1],
        time_limit_s=FAMILY_TIME_LIMIT_S,
        migration_weight=0.0,
    )
    started = time.perf_counter()
    plan = solve(cold)
    solve_s = time.perf_counter() - started
    greedy_name, greedy = best_greedy(cold)
    lp_bound, proven = family_bound(cold, plan, reference_milp_s)
    again = solve(cold)

    warm = dataclasses.replace(cold, migration_weight=Snapshot.migration_weight)
    nodrift = solve(drifted(warm, plan.placement, seed=seed, amount=0.0))
    shifted = reshuffled(warm, plan.placement, seed=2000 + seed, share=0.3)
    started = time.perf_counter()
    replan = solve(shifted)
    shift_s = time.perf_counter() - started
    keep = route(shifted, plan.placement)
    fresh = solve(
        dataclasses.replace(
            shifted, migration_weight=0.0, models=tuple(dataclasses.replace(m, current=()) for m in shifted.models)
        )
    )
    demand = sum(max(0.0, m.demand_per_s) for m in cold.models)
    return {
        "solve_s": solve_s,
        "served_frac": plan.served_per_s / demand if demand else 1.0,
        "served_vs_best_greedy": plan.served_per_s / max(greedy.served_per_s, 1e-12),
        "objective_vs_best_greedy": plan.objective / greedy.objective if greedy.objective > 0 else float("nan"),
        "best_greedy": greedy_name,
        "gap_closed": gap_closed(plan.objective, greedy.objective, proven),
        "gap_closed_lp": gap_closed(plan.objective, greedy.objective, lp_bound),
        "lp_vs_best_greedy": lp_bound / greedy.objective if greedy.objective > 0 else float("nan"),
        "proven_vs_best_greedy": proven / greedy.objective if greedy.objective > 0 else float("nan"),
        "repeat_moved_frac": moved_frac(plan.placement, again.placement),
        "moved_frac_nodrift": moved_frac(plan.placement, nodrift.placement),
        "shift_gap_recovered": gap_closed(replan.served_per_s, keep.served_per_s, fresh.served_per_s),
        "shift_moved_frac": moved_frac(plan.placement, replan.placement),
        "shift_served_vs_fresh": replan.served_per_s / max(fresh.served_per_s, 1e-12),
        "shift_resolve_s": shift_s,
        "status": str(plan.status),
        "replicas": plan.replica_count(),
        "infeasible_models": len(plan.infeasible_models),
        **contention(cold),
    }


def moved_frac(before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> float:
    """(loads + unloads) / replicas before."""
    old = {(m, g) for m, devs in before.items() for g in devs}
    new = {(m, g) for m, devs in after.items() for g in devs}
    return len(old ^ new) / max(1, len(old))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numbers over rounds; strings and flags from the first round."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        if isinstance(first, bool | str):
            out[key] = first
        else:
            out[key] = round(statistics.median(r[key] for r in rows), 4)
    return out


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "none":
            continue
        models, _, gpus = part.strip().partition("x")
        sizes.append((int(models), int(gpus)))
    return sizes


def _silence_highs_banner() -> None:
    """highspy prints its banner on stdout at the first Highs(); send it to stderr so stdout stays JSON lines."""
    if not milp_arrays.available():
        return
    import os

    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        highspy.Highs()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.solver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"MODELSxGPUS,... (default {DEFAULT_SIZES})")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per size, figures are medians (default 1)")
    parser.add_argument(
        "--families",
        default=",".join(Family),
        help=f"realistic families to run after the sizes, comma-separated, or 'none' (default {','.join(Family)})",
    )
    parser.add_argument("--family-size", help="MODELSxGPUS for every family instead of its own size")
    parser.add_argument(
        "--reference-milp-s",
        type=float,
        default=REFERENCE_MILP_S,
        help=f"search time of the long MILP that proves a family's bound (default {REFERENCE_MILP_S:g})",
    )
    parser.add_argument("--fleet", help="JSON snapshot to benchmark instead of generated fleets (format above)")
    parser.add_argument("--uncontended", action="store_true", help="models fill half the memory, not all of it")
    parser.add_argument("--time-limit-s", type=float, help="override the per-size solver time limit")
    parser.add_argument("--horizon-s", type=float, default=600.0, help="migration amortisation horizon H (600)")
    parser.add_argument(
        "--hysteresis", type=float, default=Snapshot.hysteresis, help=f"Snapshot.hysteresis ({Snapshot.hysteresis})"
    )
    parser.add_argument(
        "--migration-weight",
        type=float,
        default=Snapshot.migration_weight,
        help=f"Snapshot.migration_weight; 0 = no migration cost ({Snapshot.migration_weight})",
    )
    parser.add_argument("--drift", type=float, default=0.1, help="demand drift: factors in [1 - d, 1 + d] (0.1)")
    parser.add_argument(
        "--load-factor", type=float, default=0.7, help="offered work / usable fleet time, generated fleets (0.7)"
    )
    parser.add_argument(
        "--full-bound-pairs",
        type=int,
        default=FULL_BOUND_PAIRS,
        help=f"largest problem whose full LP bound is computed (default {FULL_BOUND_PAIRS})",
    )
    args = parser.parse_args(argv)
    _silence_highs_banner()

    if args.fleet:
        with open(args.fleet, encoding="utf-8") as fh:
            snapshot = snapshot_from_dict(json.load(fh))
        if args.time_limit_s:
            snapshot = dataclasses.replace(snapshot, time_limit_s=args.time_limit_s)
        rows = [measure(snapshot, 1000 + r, args.full_bound_pairs, args.drift) for r in range(args.rounds)]
        head = {"fleet": args.fleet, "models": len(snapshot.models), "gpus": len(snapshot.devices)}
        print(json.dumps({**head, "rounds": args.rounds, **summarise(rows)}), flush=True)
        return 0

    for models, gpus in parse_sizes(args.sizes):
        limit = args.time_limit_s or time_limit_for(models, gpus)
        rows = []
        for r in range(args.rounds):
            snapshot = generate_fleet(
                models,
                gpus,
                seed=r,
                contended=not args.uncontended,
                load_factor=args.load_factor,
                time_limit_s=limit,
                horizon_s=args.horizon_s,
                hysteresis=args.hysteresis,
                migration_weight=args.migration_weight,
            )
            rows.append(measure(snapshot, 1000 + r, args.full_bound_pairs, args.drift))
        head = {"models": models, "gpus": gpus, "contended": not args.uncontended, "load_factor": args.load_factor}
        head |= {"time_limit_s": limit, "horizon_s": args.horizon_s, "hysteresis": args.hysteresis}
        head |= {"migration_weight": args.migration_weight, "drift": args.drift}
        print(json.dumps({**head, "rounds": args.rounds, **summarise(rows)}), flush=True)
    families = [] if args.families in ("", "none") else [Family(f.strip()) for f in args.families.split(",")]
    for family in families:
        size = parse_sizes(args.family_size)[0] if args.family_size else (0, 0)
        rows = [measure_family(family, r, size, args.reference_milp_s) for r in range(args.rounds)]
        sample = generate_family(family, n_models=size[0], n_gpus=size[1])
        head = {"family": str(family), "models": len(sample.models), "gpus": len(sample.devices)}
        head |= {"time_limit_s": FAMILY_TIME_LIMIT_S}
        print(json.dumps({**head, "rounds": args.rounds, **summarise(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
