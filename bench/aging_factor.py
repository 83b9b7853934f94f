"""``python -m bench.aging_factor``: how the aging clock's backlog factor trades the mean for the worst wait.

Simulation only (``bench.simulate``'s model of the fleet, each dropped aging copy charged ``--stale-copy-ms`` of
worker time), on two families of workloads:

- ``trace``: 30 runs, five 1000-request slices of the Azure trace x offered load 0.8 / 0.9 / 0.97 x 1 or 3
  servers; the traffic the issue's targets are stated on;
- ``starve``: 9 runs, seeded Poisson streams built to starve long requests under SJF: short requests (50 ms)
  at load 0.7-0.9 with sparse long ones (1 s) making the total 0.95-0.98.

For each factor in ``--factors`` it prints one JSON line: per family, the median and worst mean response over
FIFO's, the worst of the worst-wait ratios, and the promotions per request; SJF's figures come first, as the
reference aging cannot beat on the mean. This is the measurement behind ``PolicyParams.aging_backlog_factor``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Sequence

from app.policies import Policy, PolicyParams
from bench.simulate import SimConfig, simulate, summarize
from bench.trace import DEFAULT_TRACE_PATH, Request, SizeClass, build_workload, load_trace


def trace_workloads(path: str) -> list[tuple[list[Request], int]]:
    rows = load_trace(path)
    starts = [round(i * (len(rows) - 1000) / 4) for i in range(5)]
    return [
        (build_workload(rows[s : s + 1000], servers=servers, load=load, mean_service_ms=100.0), servers)
        for s in starts
        for load in (0.8, 0.9, 0.97)
        for servers in (1, 3)
    ]


def starving_workloads(count: int = 6000) -> list[tuple[list[Request], int]]:
    out = []
    for seed in (1, 2, 3):
        for short_load, long_load in ((0.85, 0.1), (0.7, 0.25), (0.9, 0.08)):
            rnd = random.Random(seed)
            short_s, long_s = 0.05, 1.0
            rate = short_load / short_s + long_load / long_s
            p_long = (long_load / long_s) / rate
            t_s, requests = 0.0, []
            for _ in range(count):
                t_s += rnd.expovariate(rate)
                is_long = rnd.random() < p_long
                service_s = (long_s if is_long else short_s) * rnd.uniform(0.8, 1.2)
                size = SizeClass.LONGEST if is_long else SizeClass.SHORTEST
                requests.append(Request(t_s, round(service_s * 1000), service_s, size))
            out.append((requests, 1))
    return out


def run(requests: list[Request], servers: int, policy: Policy, params: PolicyParams, stale_s: float) -> tuple:
    # The beat ticks twice per aging step, as bench.scheduling's 0.25 s does for its ~0.1 s typical request.
    config = SimConfig(policy, params, servers, None, params.aging_step_s / 2, stale_copy_s=stale_s)
    counts: dict[str, int] = {}
    summary = summarize(config, simulate(requests, config, counts))
    return summary["mean_ms"], summary["max_wait_ms"], counts.get("promoted", 0) / len(requests)


def sweep(family: list[tuple[list[Request], int]], factors: Sequence[float | None], stale_s: float) -> dict:
    """Per factor (None: SJF), the ratios against FIFO over every workload of the family."""
    ratios: dict[float | None, list[tuple[float, float, float]]] = {f: [] for f in factors}
    for requests, servers in family:
        typical_s = statistics.fmean(r.service_s for r in requests)
        base = PolicyParams.around(typical_s)
        fifo_mean, fifo_wait, _ = run(requests, servers, Policy.FIFO, base, stale_s)
        for factor in factors:
            if factor is None:
                mean, wait, copies = run(requests, servers, Policy.SJF, base, stale_s)
            else:
                params = PolicyParams.around(typical_s, aging_backlog_factor=factor)
                mean, wait, copies = run(requests, servers, Policy.AGING, params, stale_s)
            ratios[factor].append((mean / fifo_mean, wait / fifo_wait, copies))
    return {
        f: {
            "runs": len(r),
            "mean_vs_fifo_median": round(statistics.median(x[0] for x in r), 3),
            "mean_vs_fifo_worst": round(max(x[0] for x in r), 3),
            "max_wait_vs_fifo_worst": round(max(x[1] for x in r), 3),
            "promoted_per_request": round(statistics.fmean(x[2] for x in r), 3),
        }
        for f, r in ratios.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aging_factor", description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE_PATH), help="CSV with the Azure trace's columns")
    parser.add_argument("--factors", default="1.25,1.5,2,3", help="comma-separated aging_backlog_factor values")
    parser.add_argument("--stale-copy-ms", type=float, default=10.0, help="worker time a dropped copy costs")
    args = parser.parse_args(argv)
    try:
        factors: list[float | None] = [None, *(float(f) for f in args.factors.split(",") if f.strip())]
        families = {"trace": trace_workloads(args.trace), "starve": starving_workloads()}
    except (OSError, ValueError) as exc:
        print(f"bench.aging_factor: {exc}", file=sys.stderr)
        return 2
    results = {name: sweep(family, factors, args.stale_copy_ms / 1000.0) for name, family in families.items()}
    for factor in factors:
        line = {"policy": "sjf" if factor is None else "aging", "aging_backlog_factor": factor}
        line.update({name: results[name][factor] for name in families})
        line["stale_copy_ms"] = args.stale_copy_ms
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
