"""Placement solver benchmark: `python -m bench.solver` (from the repository root). One JSON line per fleet size.

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

--fleet PATH reads one snapshot from JSON instead of generating fleets (then models/gpus are its counts):
    {"devices": [{"id": "g0", "mem_bytes": 80000000000, "speed": 1.0, "kind": "gpu"}, ...],
     "models": [{"name": "llama", "mem_bytes": 16000000000, "demand_per_s": 12.0, "service_s": 0.05,
                 "weight": 1.0, "min_replicas": 0, "max_replicas": null, "pinned": [], "current": [],
                 "load_cost_s": 30.0}, ...],
     "rho": 0.9, "time_limit_s": 5.0, ...}          (any other `beat.snapshot.Snapshot` field, optional)
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

from beat import milp_arrays
from beat.candidates import all_pairs, fairness_applies, screen_models
from beat.fleetgen import contention, drifted, generate_fleet, snapshot_from_dict
from beat.greedy import demand_greedy_placement, ffd_placement
from beat.milp_arrays import solve_highs
from beat.problem import build_problem
from beat.snapshot import Snapshot
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
    for part in text.split(","):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
