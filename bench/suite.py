"""The pure parts of ``python -m bench.scheduling --suite``: workloads, run order, statistics, starvation detector.

Nothing here talks to Redis or a worker, so all of it is unit-tested (tests/unit/test_suite.py); the live loop that
uses it is in ``bench.scheduling``.

Workloads. Every workload is a list of :class:`~bench.trace.Request` whose ``size_tokens`` is the request's row count
(what the producer sizes it by) and whose ``service_s`` is the model's own run time for those rows, from a
:class:`ServiceModel` calibrated on the live worker. Sizes are scaled so that every workload has the same mean worker
time (so one typical service time, one set of size bands and one aging clock fit them all), then arrivals are
compressed so the offered load (total worker time over the span, one worker) is the one asked. Generators:

- :func:`trace_slice`: a window of the shared code trace from a chosen starting row, its bursts kept;
- :func:`poisson_heavy`: Poisson arrivals, lognormal or Pareto sizes (seeded);
- :func:`mmpp`: a two-state Markov-modulated Poisson stream (bursts of 8x the quiet rate), Pareto sizes (seeded).

Run order. :func:`policy_orders` is a balanced Latin square (Williams design): over as many repeats as there are
policies, each policy runs once in every position and follows every other policy once, so a slow spell of the
machine or whatever one policy leaves behind (a warmer cache, a lagging estimator) does not fall on one policy.

Pace. A run's ratio to FIFO is a ratio of two queues, and a queue's mean response moves steeply with its load: the
simulation of the Poisson-lognormal workload (``python -m bench.spread``) gives SJF at 0.60x FIFO's mean when both
run at 0.85, 0.49x when the FIFO run's worker was 5% slower and 0.71x when SJF's was, 0.17x / 1.37x at 25%. On
these two cores the worker's pace moves by that much between runs, so the suite removes it from the comparison in
three steps. Each run's arrivals are the workload's stretched by the pace the worker kept in the latest runs
(:meth:`Pace.arrival_scale`): a queue whose arrivals and services are slowed by the same factor is the same queue
on a slower clock, and its ratio to another such queue does not move (in simulation, over paces 0.9-1.3: SJF's
ratio 0.595-0.601 with the arrivals stretched, 0.35-0.67 without; the size bands, fixed in seconds, are what
keeps it from being exact). A run whose measured load still came out more than ``Limits.load_off`` from the asked
one is flagged (it ran a different experiment); and a ratio is only taken between a run and its repeat's FIFO run
whose measured loads agree within ``Limits.pair_load``.

Spread. The spread of a policy's ratio to FIFO is max - min over the repeats' clean, load-matched ratios (the IQR is
printed beside it); with fewer than two such ratios there is no spread, and it is reported as missing, not as 0.

Starvation. On two cores shared with other work, a run can lose its worker's CPU for a while; such a run measures the
machine, not the policy. :func:`starvation_flags` names why a run is not to be trusted, from what it measured about
itself: a fixed probe (a burst of identical requests) before and after the run that moved or ran slower than at the
start of the suite, the worker's own model time running above the calibration, the per-message cost between
back-to-back requests above the calibrated one, or a client that sent its requests late. Flagged runs are reported
as such and left out of the medians.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.trace import Request, SizeClass, TraceRow, quantile

POLICY_NAMES = ("fifo", "sjf", "srtf", "aging")


@dataclass(frozen=True)
class ServiceModel:
    """What a request of ``rows`` rows costs the live worker, as calibrated.

    ``points`` are (rows, model run time s) measured on the worker, in increasing rows: the model's run time is
    interpolated between them and extrapolated along the last two beyond them (at a few rows the run time is not
    linear in the rows: a straight line through all of them went negative there). ``per_message_s`` is the rest of
    the worker's time per message at saturation; ``latency_s`` what a lone request's response adds to those two.
    It is negative when part of the per-message cost comes after the result is stored (acknowledgement, events,
    fetching the next message): that part holds the worker but no longer the response.
    """

    points: tuple[tuple[int, float], ...]
    per_message_s: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.points) < 2 or any(b[0] <= a[0] for a, b in zip(self.points, self.points[1:], strict=False)):
            raise ValueError("a service model needs at least two points in increasing rows")

    def model_s(self, rows: int) -> float:
        pts = self.points
        if rows <= pts[0][0]:
            return pts[0][1]
        for (r0, s0), (r1, s1) in zip(pts, pts[1:], strict=False):
            if rows <= r1 or (r1, s1) == pts[-1]:
                return max(s0 + (s1 - s0) * (rows - r0) / (r1 - r0), 0.0)
        raise AssertionError("unreachable")

    def worker_s(self, rows: int) -> float:
        return self.model_s(rows) + self.per_message_s

    def rows_for(self, worker_s: float) -> int:
        """The fewest rows whose worker time reaches ``worker_s`` (at least 1)."""
        rows = 1
        while self.worker_s(rows) < worker_s and rows < 1 << 20:
            rows *= 2
        low, high = rows // 2, rows
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.worker_s(mid) < worker_s else (low, mid)
        return max(1, high)


@dataclass(frozen=True)
class Workload:
    name: str
    load: float
    requests: tuple[Request, ...]

    @property
    def span_s(self) -> float:
        return self.requests[-1].arrival_s - self.requests[0].arrival_s


def _rows_for(raw: Sequence[float], factor: float, max_rows: int) -> list[int]:
    return [max(1, min(max_rows, round(r * factor))) for r in raw]


def shape(
    name: str,
    arrivals: Sequence[float],
    raw_sizes: Sequence[float],
    cost: ServiceModel,
    *,
    load: float,
    mean_worker_s: float,
    max_rows: int,
) -> Workload:
    """Rows scaled so the mean worker time is ``mean_worker_s`` (as near as rounding and the clip allow), then
    arrivals compressed so that the offered load is ``load``.

    Requests are in arrival order and start at 0; the 10% shortest and longest form the size classes.
    """
    if len(arrivals) != len(raw_sizes) or len(arrivals) < 2:
        raise ValueError("need as many sizes as arrivals, and at least two requests")
    if not (load > 0.0 and mean_worker_s > cost.per_message_s and max_rows >= 1):
        raise ValueError(f"need load > 0, max_rows >= 1, mean_worker_s above the per-message cost; got {load}")
    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i])
    times = [arrivals[i] - arrivals[order[0]] for i in order]
    raw = [max(float(raw_sizes[i]), 1e-9) for i in order]

    def mean_worker(factor: float) -> float:
        return statistics.fmean(cost.worker_s(r) for r in _rows_for(raw, factor, max_rows))

    # Bisection in log scale on the factor: the mean worker time grows with it (the clip makes it flat at the ends).
    low, high = 1e-6, 1e6
    for _ in range(80):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if mean_worker(mid) < mean_worker_s else (low, mid)
    rows = _rows_for(raw, high, max_rows)
    worker = [cost.worker_s(r) for r in rows]
    span_s = times[-1]
    if not span_s > 0.0:
        raise ValueError("the arrivals span no time")
    scale = sum(worker) / (load * span_s)
    services = [cost.model_s(r) for r in rows]
    short_max, long_min = quantile(services, 0.1), quantile(services, 0.9)

    def size_class(service_s: float) -> SizeClass:
        if service_s <= short_max:
            return SizeClass.SHORTEST
        return SizeClass.LONGEST if service_s >= long_min else SizeClass.MIDDLE

    requests = tuple(Request(t * scale, r, s, size_class(s)) for t, r, s in zip(times, rows, services, strict=True))
    return Workload(name, load, requests)


def offered(workload: Workload, cost: ServiceModel) -> float:
    """Offered load of a workload on one worker: total worker time over the span."""
    return sum(cost.worker_s(r.size_tokens) for r in workload.requests) / workload.span_s


def trace_slice(rows: Sequence[TraceRow], start: int, count: int) -> tuple[list[float], list[float]]:
    """Arrivals and sizes (total tokens) of ``count`` trace rows from ``start``."""
    window = rows[start : start + count]
    if len(window) < count:
        raise ValueError(f"the trace has {len(rows)} rows; a slice of {count} from row {start} does not fit")
    return [r.arrival_s for r in window], [float(r.context_tokens + r.generated_tokens) for r in window]


def _sizes(rng: np.random.Generator, count: int, dist: str) -> list[float]:
    if dist == "lognormal":
        return [float(x) for x in rng.lognormal(0.0, 1.3, count)]
    if dist == "pareto":
        # Pareto with shape 1.5: a finite mean, an infinite variance, as heavy as request sizes get.
        return [float(x) for x in 1.0 + rng.pareto(1.5, count)]
    raise ValueError(f"unknown size distribution {dist!r}; known: lognormal, pareto")


def poisson_heavy(seed: int, count: int, dist: str = "lognormal") -> tuple[list[float], list[float]]:
    """Poisson arrivals (unit rate; ``shape`` rescales them) with heavy-tailed sizes; same seed, same stream."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0, count))
    return [float(t) for t in arrivals], _sizes(rng, count, dist)


def mmpp(
    seed: int, count: int, *, burst_ratio: float = 8.0, mean_stay: float = 40.0, dist: str = "pareto"
) -> tuple[list[float], list[float]]:
    """A two-state Markov-modulated Poisson stream: a quiet state and a burst state ``burst_ratio`` times faster.

    The state switches after an exponential stay of mean ``mean_stay`` quiet-rate arrival times in either state, so a
    burst brings about ``burst_ratio x mean_stay`` requests at once. Same seed, same stream.
    """
    rng = np.random.default_rng(seed)
    rates = (1.0, burst_ratio)
    state, t_s, switch_at = 0, 0.0, float(rng.exponential(mean_stay))
    arrivals: list[float] = []
    while len(arrivals) < count:
        step = float(rng.exponential(1.0 / rates[state]))
        if t_s + step >= switch_at:
            # Memoryless: at the switch, draw the next arrival afresh at the new state's rate.
            t_s, state = switch_at, 1 - state
            switch_at = t_s + float(rng.exponential(mean_stay))
            continue
        t_s += step
        arrivals.append(t_s)
    return arrivals, _sizes(rng, count, dist)


def policy_orders(policies: Sequence[str] = POLICY_NAMES) -> list[list[str]]:
    """Balanced Latin square (Williams design) over ``policies``: one order per row.

    For an even count every policy is in every position once and directly follows every other policy once.
    """
    n = len(policies)
    first = [0]
    for k in range(1, n):
        first.append((k + 1) // 2 if k % 2 else n - k // 2)
    return [[policies[(j + i) % n] for j in first] for i in range(n)]


def order_for(repeat: int, workload_index: int, policies: Sequence[str] = POLICY_NAMES) -> list[str]:
    """The order the policies run in for one workload in one repeat: rows of the square taken in turn."""
    orders = policy_orders(policies)
    return orders[(repeat + workload_index) % len(orders)]


def spread(values: Iterable[float]) -> dict[str, float | int | None]:
    """Median, min, max, spread (max - min) and interquartile range (nearest rank) of ``values``.

    Everything is None when empty; the spread and the IQR are None for a single value, which has no spread (a 0
    there once read as a met target).
    """
    xs = sorted(values)
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None, "iqr": None}
    several = len(xs) >= 2
    return {
        "n": len(xs),
        "median": round(statistics.median(xs), 3),
        "min": round(xs[0], 3),
        "max": round(xs[-1], 3),
        "spread": round(xs[-1] - xs[0], 3) if several else None,
        "iqr": round(quantile(xs, 0.75) - quantile(xs, 0.25), 3) if several else None,
    }


def at_pace(workload: Workload, scale: float) -> Workload:
    """``workload`` with every arrival time multiplied by ``scale``: the same requests in the same order, offered
    ``1 / scale`` of its load at the calibrated pace, which is its own load on a worker ``scale`` times slower."""
    if not scale > 0.0:
        raise ValueError(f"the arrival scale must be positive, got {scale}")
    requests = tuple(Request(r.arrival_s * scale, r.size_tokens, r.service_s, r.size_class) for r in workload.requests)
    return Workload(workload.name, workload.load, requests)


@dataclass(frozen=True)
class Limits:
    """When a run counts as starved; each limit names one reason."""

    probe_drift: float = 0.25  # the probe after the run differs from the one before by more than this (relative)
    probe_slow: float = 1.50  # a probe around the run is slower than the suite's baseline probe by this factor
    model_slow: float = 1.30  # the worker's model time runs this much above the calibration (median over requests)
    # The model time of the run's second half differs from its first half's by this much. Not 25% as before: in
    # simulation (``python -m bench.spread``), at an unchanged mean pace a 25% drift in one run of a pair moves the
    # heavy-tailed SJF ratio by up to 0.07 either way, 10% by up to 0.04.
    model_drift: float = 0.10
    per_message_slow: float = 2.0  # the back-to-back per-message cost is this many times the calibrated one
    send_late: float = 2.0  # the client sent a request this many typical service times after its arrival time
    # The measured load is off the asked one by more than this (relative). In simulation the heavy-tailed workloads'
    # SJF ratio moves by about 0.02 between loads 0.81 and 0.89, by 0.14 between 0.77 and 0.94.
    load_off: float = 0.05
    # A policy's run and its repeat's FIFO run had measured loads this far apart (relative): in simulation 3% moves
    # the Poisson-lognormal SJF ratio by up to 0.07 either way, 5% by 0.11, so 3% keeps two repeats within 0.15.
    pair_load: float = 0.03


@dataclass(frozen=True)
class RunHealth:
    """What one live run measured about the machine while it ran."""

    probe_before_s: float
    probe_after_s: float
    model_ratio: float  # median of the worker's model time over the calibrated model time, per request
    per_message_s: float | None  # median back-to-back per-message cost in the run; None with too few pairs
    send_late_s: float  # latest a request was sent after its scheduled arrival
    model_drift: float = 1.0  # model_ratio of the second half of the run (by sending) over that of the first half
    load_vs_asked: float = 1.0  # the load the worker measured over the load the workload asks for


@dataclass
class Pace:
    """The machine's unstarved pace, learned as the suite goes.

    Here the pace swings by 2x within minutes (other people's tests on the same two cores), so one baseline taken at
    the start may itself be starved or unusually quiet. A starved spell only ever makes things slower, so the fast
    end of what has been seen is the machine's own pace: the reference is the lower quartile of every probe, every
    run's model-time ratio and every per-message cost so far (the calibration's included).
    """

    probes: list[float]
    model_ratios: list[float]
    per_messages: list[float]
    #: Per run, the worker's time per request over the calibrated one (its measured load over the load it was
    #: offered at the calibrated pace), in the order the runs ran.
    worker_paces: list[float] = field(default_factory=list)

    def probe_s(self) -> float:
        return quantile(self.probes, 0.25)

    def model_ratio(self) -> float:
        return quantile(self.model_ratios, 0.25) if self.model_ratios else 1.0

    def per_message_s(self) -> float:
        return quantile(self.per_messages, 0.25)

    def arrival_scale(self, recent: int = 3) -> float:
        """What to stretch the next run's arrivals by so that it gets its asked load: the median worker pace of the
        latest ``recent`` runs (1.0 before any).

        The latest runs, not the fast end of all of them: the aim here is the load the next run will actually get,
        and the pace drifts over minutes; the median, so that one starved run does not set the next one's clock.
        """
        latest = self.worker_paces[-recent:]
        return statistics.median(latest) if latest else 1.0

    def add(self, health: RunHealth, worker_pace: float | None = None) -> None:
        if worker_pace is not None and worker_pace > 0.0:
            self.worker_paces.append(worker_pace)
        self.probes += [health.probe_before_s, health.probe_after_s]
        self.model_ratios.append(health.model_ratio)
        if health.per_message_s is not None:
            self.per_messages.append(health.per_message_s)


def starvation_flags(
    health: RunHealth,
    baseline_probe_s: float,
    per_message_s: float,
    typical_s: float,
    limits: Limits = Limits(),
    model_ref: float = 1.0,
) -> list[str]:
    """Reasons to distrust a run (empty: a clean run); ``model_ref`` is the unstarved model-time ratio."""
    flags = []
    before, after = health.probe_before_s, health.probe_after_s
    if abs(after - before) > limits.probe_drift * min(before, after):
        flags.append(f"probe moved {before * 1000:.1f} -> {after * 1000:.1f} ms")
    if max(before, after) > limits.probe_slow * baseline_probe_s:
        flags.append(f"probe {max(before, after) * 1000:.1f} ms vs baseline {baseline_probe_s * 1000:.1f} ms")
    if health.model_ratio > limits.model_slow * model_ref:
        flags.append(f"model time {health.model_ratio:.2f}x calibration (unstarved {model_ref:.2f}x)")
    if abs(health.model_drift - 1.0) > limits.model_drift:
        flags.append(f"model time moved {health.model_drift:.2f}x within the run")
    if health.per_message_s is not None and health.per_message_s > limits.per_message_slow * per_message_s:
        flags.append(f"per-message {health.per_message_s * 1000:.1f} ms vs {per_message_s * 1000:.1f} ms")
    if health.send_late_s > limits.send_late * typical_s:
        flags.append(f"client sent {health.send_late_s * 1000:.0f} ms late")
    if abs(health.load_vs_asked - 1.0) > limits.load_off:
        flags.append(f"ran at {health.load_vs_asked:.2f}x the asked load")
    return flags


def loads_apart(run: dict, fifo: dict, limits: Limits = Limits()) -> str | None:
    """Why a run and its repeat's FIFO run do not make a ratio of policies (their measured loads differ by more
    than ``limits.pair_load``), or None when they do."""
    mine, theirs = run.get("measured_load"), fifo.get("measured_load")
    if mine is None or theirs is None:
        return None  # records without the figure (older outputs) are paired as they were
    if abs(mine - theirs) > limits.pair_load * min(mine, theirs):
        return f"measured load {mine:.3f} vs its FIFO run's {theirs:.3f}"
    return None


def apart_from_fifo(ran: dict[str, dict], fifo: dict, limits: Limits = Limits()) -> list[str]:
    """Of the policies that have run in a repeat (``ran``: policy -> its latest run), the ones whose clean run is at
    a load too far from the repeat's clean FIFO run (``fifo``) to make a ratio; none when FIFO's run is flagged."""
    if fifo["flags"]:
        return []
    return [
        policy
        for policy, run in ran.items()
        if policy != "fifo" and not run["flags"] and loads_apart(run, fifo, limits) is not None
    ]


def back_to_back_cost(results: Sequence[dict], mean: bool = False) -> float | None:
    """Per-message cost between requests served back to back (the next one was already sent when the previous
    finished): the gap between their completions less the later one's model time; None under 10 pairs.

    The median by default (what a typical message costs: the starvation detector's figure); with ``mean`` the mean,
    which is what the worker's capacity depends on: a preempted worker's hiccups make the mean larger than the median,
    and a simulation charging the median ran 5-18% short of live on busy runs.
    """
    by_done = sorted(results, key=lambda r: r["done"])
    gaps = [
        cur["done"] - prev["done"] - cur["model_s"]
        for prev, cur in zip(by_done, by_done[1:], strict=False)
        if cur["sent"] < prev["done"]
    ]
    if len(gaps) < 10:
        return None
    return statistics.fmean(gaps) if mean else statistics.median(gaps)


def lone_overhead(results: Sequence[dict]) -> float | None:
    """Median of what a response adds to its model time for requests that found the worker idle (every request sent
    before them already answered): the per-request overhead at no backlog; None under 5 such requests."""
    extra, answered_by = [], -math.inf
    for r in sorted(results, key=lambda r: r["sent"]):
        if r["sent"] > answered_by:
            extra.append(r["done"] - r["sent"] - r["model_s"])
        answered_by = max(answered_by, r["done"])
    return statistics.median(extra) if len(extra) >= 5 else None


def halves_ratio(values: Sequence[float]) -> float:
    """Median of the second half of ``values`` over the median of the first half (1.0 when too short)."""
    half = len(values) // 2
    if half < 2:
        return 1.0
    first, second = statistics.median(values[:half]), statistics.median(values[half:])
    return second / first if first > 0 else 1.0


def summarize_suite(runs: Sequence[dict], sims: dict[tuple[str, str], dict], limits: Limits = Limits()) -> list[dict]:
    """One line per (workload, policy) from the per-run records and the simulated figures.

    ``runs`` carry ``repeat``, ``workload``, ``policy``, ``mean_ms``, ``max_wait_ms``, ``measured_load`` and
    ``flags``, in the order they ran; when a run was retried (it was flagged) the last attempt is the repeat's run,
    and every flagged attempt is counted in ``flagged``. A repeat's ratio for a policy needs that run and the same
    repeat's FIFO run both clean and at measured loads within ``limits.pair_load`` of each other
    (``load_mismatched`` counts the pairs that were not). ``per_repeat`` lists each repeat's run as counted, with
    its ratio to FIFO (None where there is none), the same ratio between the two runs' own simulations and its
    flags. ``sims`` maps (workload, policy) to the simulation's ``mean_ms`` and ``max_wait_ms`` predicted from the
    calibration (``live_vs_predicted``); a run's own ``live_vs_sim`` (live over the simulation of that run, fed the
    service times it measured) gives the line's ``live_vs_sim``, the median over clean runs.
    """
    by_key = {(r["workload"], r["policy"], r["repeat"]): r for r in runs}
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    policies = [p for p in POLICY_NAMES if any(r["policy"] == p for r in runs)]
    lines = []
    for workload in workloads:
        repeats = sorted({r["repeat"] for r in runs if r["workload"] == workload})
        sim_fifo = sims.get((workload, "fifo"))
        for policy in policies:
            mine = [by_key[(workload, policy, k)] for k in repeats if (workload, policy, k) in by_key]
            clean = [r for r in mine if not r["flags"]]
            attempts = [r for r in runs if r["workload"] == workload and r["policy"] == policy]
            mean_ratio, wait_ratio = [], []
            mismatched = 0
            per_repeat = []
            for r in mine:
                fifo = by_key.get((workload, "fifo", r["repeat"]))
                ratio = None
                usable = fifo is not None and not r["flags"] and not fifo["flags"]
                if usable and fifo is not None and fifo["mean_ms"] > 0 and fifo["max_wait_ms"] > 0:
                    if loads_apart(r, fifo, limits) is not None:
                        mismatched += 1  # the two ran at different loads: not a ratio of policies
                    else:
                        ratio = r["mean_ms"] / fifo["mean_ms"]
                        mean_ratio.append(ratio)
                        wait_ratio.append(r["max_wait_ms"] / fifo["max_wait_ms"])
                # The same ratio between the two runs' own simulations: when it moves with the live one from repeat
                # to repeat, what moved is the service the runs got, not how the live system scheduled it.
                sim_mine, sim_fifo_run = r.get("sim_mean_ms"), None if fifo is None else fifo.get("sim_mean_ms")
                per_repeat.append(
                    {
                        "repeat": r["repeat"],
                        "mean_ms": r["mean_ms"],
                        "measured_load": r.get("measured_load"),
                        "mean_vs_fifo": None if ratio is None else round(ratio, 3),
                        "sim_vs_fifo": round(sim_mine / sim_fifo_run, 3) if sim_mine and sim_fifo_run else None,
                        "live_vs_sim": r.get("live_vs_sim"),
                        "flags": r["flags"],
                    }
                )
            # For the record only, not a result: the same ratios with the flagged runs and the loads left in.
            unchecked = []
            for r in mine:
                fifo = by_key.get((workload, "fifo", r["repeat"]))
                if fifo is not None and fifo["mean_ms"] > 0:
                    unchecked.append(r["mean_ms"] / fifo["mean_ms"])
            line: dict = {
                "workload": workload,
                "policy": policy,
                "runs": len(mine),
                "clean": len(clean),
                "flagged": sum(1 for r in attempts if r["flags"]),
                "load_mismatched": mismatched,
                "mean_vs_fifo": spread(mean_ratio),
                "max_wait_vs_fifo": spread(wait_ratio),
                "mean_vs_fifo_unchecked": spread(unchecked),
                "live_mean_ms": spread(r["mean_ms"] for r in clean)["median"],
                "measured_load": spread(r["measured_load"] for r in clean if "measured_load" in r)["median"],
                "per_repeat": per_repeat,
            }
            sim = sims.get((workload, policy))
            if sim is not None:
                line["sim_mean_ms"] = sim["mean_ms"]
                if sim_fifo is not None:
                    line["sim_mean_vs_fifo"] = round(sim["mean_ms"] / sim_fifo["mean_ms"], 3)
                    line["sim_max_wait_vs_fifo"] = round(sim["max_wait_ms"] / sim_fifo["max_wait_ms"], 3)
                if line["live_mean_ms"] is not None:
                    line["live_vs_predicted"] = round(line["live_mean_ms"] / sim["mean_ms"], 3)
            # Live against the simulation of the same run (its measured service times), where the runs carry it.
            per_run = [r["live_vs_sim"] for r in clean if r.get("live_vs_sim") is not None]
            if per_run:
                line["live_vs_sim"] = spread(per_run)["median"]
            line["misses"] = misses(line)
            lines.append(line)
    return lines


def misses(line: dict) -> list[str]:
    """The issue's targets this (workload, policy) line misses; ``no clean runs`` when it cannot be judged."""
    if line["mean_vs_fifo"]["median"] is None and line["policy"] != "fifo":
        return ["no clean ratio (runs flagged, or not at their FIFO run's load)"]
    out = []
    ratio = line["mean_vs_fifo"]["median"]
    if line["policy"] in ("sjf", "srtf"):
        if line.get("sim_mean_vs_fifo") is not None and line["sim_mean_vs_fifo"] <= 0.5 and ratio > 0.6:
            out.append("mean > 0.6x FIFO where the simulation says <= 0.5x")
        if ratio > 1.05:
            out.append("mean > 1.05x FIFO")
    if line["policy"] == "sjf":
        spread_ = line["mean_vs_fifo"]["spread"]
        if spread_ is None:
            out.append("ratio spread not measured (fewer than 2 clean ratios)")
        elif spread_ >= 0.15:
            out.append("ratio spread >= 0.15")
    if line["policy"] == "aging" and (line["max_wait_vs_fifo"]["median"] or 0.0) > 2.0:
        out.append("worst wait > 2x FIFO")
    live_vs_sim = line.get("live_vs_sim")
    if live_vs_sim is not None and abs(live_vs_sim - 1.0) > 0.15:
        out.append("live more than 15% off the simulation")
    return out
