"""``python -m bench.spread``: where the spread of SJF's ratio to FIFO across the suite's repeats comes from, in
simulation only (seconds, no fleet).

The suite (``python -m bench.scheduling --suite``) reports SJF's mean response over FIFO's on the same arrivals, per
repeat, and the spread of that ratio across repeats. On the two heavy-tailed workloads it once came out at 0.53 and
0.55 where the target is under 0.15. Three things could move the ratio from one repeat to the next; each is
simulated here with the system's model (``bench.simulate``) on the suite's own workloads and calibration:

- ``sample``: the requests themselves. Every repeat of the suite replays the same arrivals and sizes, so this part
  is zero there; printed to show what new draws per repeat would cost (and how many requests a run would need):
  the ratio over ``--seeds`` seeds, per request count.
- ``pace``: the worker running at another pace than calibrated (both runs of a pair alike), with the arrivals as
  calibrated (``fixed``: what the suite did) and stretched by the same pace (``stretched``: what it does now).
- ``pair``: the SJF run and its FIFO run at different paces, arrivals as calibrated.
- ``drift``: one run of the pair slower in its second half than in its first, at the same mean pace.

Prints one JSON line per workload and part. ``--from OUT`` takes the calibration from a saved suite output (its
first line); without it, the calibration of the suite run quoted in the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from app import policies
from bench import suite
from bench.simulate import SimConfig, simulate
from bench.trace import Request

#: The calibration line of the README's suite run (2026-11-30): model ms per rows, per-message and latency ms.
DEFAULT_CALIBRATION = {
    "model_ms": {"1": 3.553, "8": 5.109, "32": 13.17, "128": 38.31, "512": 161.839},
    "per_message_ms": 6.968,
    "latency_ms": -1.102,
    "stale_copy_ms": 11.196,
    "typical_service_ms": 50.0,
    "max_rows": 1024,
}

Generator = Callable[[int, int], tuple[list[float], list[float]]]
HEAVY_TAILED: dict[str, tuple[Generator, int]] = {
    # name as in the suite, generator, the seed the suite uses
    "poisson-lognormal/0.85": (lambda seed, n: suite.poisson_heavy(seed, n, "lognormal"), 11),
    "mmpp-pareto/0.85": (lambda seed, n: suite.mmpp(seed, n), 12),
}


def slowed(workload: suite.Workload, pace: float, drift: float = 1.0) -> list[Request]:
    """The workload's requests on a worker ``pace`` times slower than calibrated (model time; the per-message cost
    is slowed in :func:`ratio`'s configuration), and in the second half of the run ``drift`` times slower than in
    the first, the run's mean pace unchanged."""
    half = len(workload.requests) // 2
    halves = (2 / (1 + drift), 2 * drift / (1 + drift))
    return [
        Request(r.arrival_s, r.size_tokens, r.service_s * pace * halves[i >= half], r.size_class)
        for i, r in enumerate(workload.requests)
    ]


def ratio(
    workload: suite.Workload,
    calibration: dict,
    sjf_pace: float = 1.0,
    fifo_pace: float = 1.0,
    drifts: tuple[float, float] = (1.0, 1.0),
) -> float:
    """SJF's simulated mean response over FIFO's on ``workload``, each run on a worker at its own pace and with its
    own drift within the run (``drifts``: SJF's, FIFO's)."""
    typical_s = calibration["typical_service_ms"] / 1000
    cost = service_model(calibration)
    warm = tuple((rows, s) for rows, s in cost.points for _ in range(24))

    def mean_ms(policy: str, pace: float, drift: float) -> float:
        config = SimConfig(
            policies.Policy(policy),
            policies.PolicyParams.around(typical_s),
            aging_period_s=0.1,
            stale_copy_s=calibration["stale_copy_ms"] / 1000 * pace,
            warm_start=warm,
            per_message_s=cost.per_message_s * pace,
            latency_s=cost.latency_s,
        )
        return statistics.fmean(o.response_s for o in simulate(slowed(workload, pace, drift), config))

    return mean_ms("sjf", sjf_pace, drifts[0]) / mean_ms("fifo", fifo_pace, drifts[1])


def service_model(calibration: dict) -> suite.ServiceModel:
    points = tuple((int(rows), ms / 1000) for rows, ms in calibration["model_ms"].items())
    return suite.ServiceModel(points, calibration["per_message_ms"] / 1000, calibration["latency_ms"] / 1000)


def build(make: Generator, seed: int, count: int, calibration: dict) -> suite.Workload:
    arrivals, sizes = make(seed, count)
    return suite.shape(
        "w",
        arrivals,
        sizes,
        service_model(calibration),
        load=0.85,
        mean_worker_s=calibration["typical_service_ms"] / 1000,
        max_rows=calibration["max_rows"],
    )


def rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="saved", metavar="OUT", help="a saved --suite output: use its calibration")
    parser.add_argument("--seeds", type=int, default=20, help="samples per request count (default 20)")
    parser.add_argument("--requests", default="200,500,1000,2000", help="request counts for the sample part")
    args = parser.parse_args(argv)
    calibration = DEFAULT_CALIBRATION
    if args.saved:
        calibration = {**DEFAULT_CALIBRATION, **json.loads(Path(args.saved).read_text().splitlines()[0])}
    paces = (0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3)
    for name, (make, seed) in HEAVY_TAILED.items():
        for count in (int(c) for c in args.requests.split(",")):
            ratios = sorted(ratio(build(make, s, count, calibration), calibration) for s in range(args.seeds))
            summary = suite.spread(ratios)
            print(json.dumps({"workload": name, "part": "sample", "requests": count, **summary}), flush=True)
        workload = build(make, seed, 200, calibration)
        fixed = [ratio(workload, calibration, p, p) for p in paces]
        stretched = [ratio(suite.at_pace(workload, p), calibration, p, p) for p in paces]
        print(
            json.dumps(
                {
                    "workload": name,
                    "part": "pace",
                    "paces": paces,
                    "fixed": rounded(fixed),
                    "fixed_spread": round(max(fixed) - min(fixed), 3),
                    "stretched": rounded(stretched),
                    "stretched_spread": round(max(stretched) - min(stretched), 3),
                }
            ),
            flush=True,
        )
        apart = (0.97, 1.0, 1.03, 1.05, 1.1, 1.25)
        print(
            json.dumps(
                {
                    "workload": name,
                    "part": "pair",
                    "pace_apart": apart,
                    "sjf_run_at_that_pace": rounded([ratio(workload, calibration, a, 1.0) for a in apart]),
                    "fifo_run_at_that_pace": rounded([ratio(workload, calibration, 1.0, a) for a in apart]),
                }
            ),
            flush=True,
        )
        drifts = (0.8, 0.9, 1.1, 1.25)
        print(
            json.dumps(
                {
                    "workload": name,
                    "part": "drift",
                    "second_half_over_first": drifts,
                    "sjf_run_drifts": rounded([ratio(workload, calibration, drifts=(d, 1.0)) for d in drifts]),
                    "fifo_run_drifts": rounded([ratio(workload, calibration, drifts=(1.0, d)) for d in drifts]),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
