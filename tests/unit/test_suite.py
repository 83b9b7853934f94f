"""The pure parts of ``python -m bench.scheduling --suite`` (bench.suite): no fleet, nothing live."""

from __future__ import annotations

import itertools

import pytest

from bench import suite
from bench.trace import TraceRow

COST = suite.ServiceModel(((1, 0.001), (10, 0.004), (100, 0.04)), per_message_s=0.004, latency_s=-0.001)


def test_service_model_interpolates_and_extrapolates() -> None:
    assert COST.model_s(1) == pytest.approx(0.001)
    assert COST.model_s(0) == pytest.approx(0.001)  # below the first point: the first point's time
    assert COST.model_s(55) == pytest.approx(0.022)
    assert COST.model_s(190) == pytest.approx(0.076)  # beyond: along the last segment
    assert COST.worker_s(10) == pytest.approx(0.008)
    rows = COST.rows_for(0.03)
    assert COST.worker_s(rows) >= 0.03 > COST.worker_s(rows - 1)
    with pytest.raises(ValueError, match="increasing rows"):
        suite.ServiceModel(((10, 0.1), (5, 0.2)), 0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: suite.poisson_heavy(seed, 300, "lognormal"),
        lambda seed: suite.poisson_heavy(seed, 300, "pareto"),
        lambda seed: suite.mmpp(seed, 300),
    ],
)
def test_generators_are_reproducible_by_seed(make) -> None:
    assert make(5) == make(5)
    assert make(5) != make(6)
    arrivals, sizes = make(5)
    assert len(arrivals) == len(sizes) == 300
    assert arrivals == sorted(arrivals)
    assert min(sizes) > 0


def test_mmpp_is_burstier_than_poisson() -> None:
    """Coefficient of variation of the gaps: 1 for Poisson, well above it for the modulated stream."""

    def cv(arrivals: list[float]) -> float:
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        mean = sum(gaps) / len(gaps)
        return (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean

    assert cv(suite.poisson_heavy(3, 4000)[0]) == pytest.approx(1.0, abs=0.1)
    assert cv(suite.mmpp(3, 4000)[0]) > 1.5


def test_unknown_size_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown size distribution"):
        suite.poisson_heavy(1, 10, "uniform")


@pytest.mark.parametrize("load", [0.6, 0.85, 0.95])
def test_shape_hits_the_mean_worker_time_and_the_load(load: float) -> None:
    arrivals, sizes = suite.poisson_heavy(9, 500)
    workload = suite.shape("w", arrivals, sizes, COST, load=load, mean_worker_s=0.03, max_rows=400)
    requests = workload.requests
    mean_worker = sum(COST.worker_s(r.size_tokens) for r in requests) / len(requests)
    assert mean_worker == pytest.approx(0.03, rel=0.02)
    assert suite.offered(workload, COST) == pytest.approx(load)
    assert requests[0].arrival_s == 0.0
    assert all(1 <= r.size_tokens <= 400 for r in requests)
    assert all(r.service_s == COST.model_s(r.size_tokens) for r in requests)
    assert [r.arrival_s for r in requests] == sorted(r.arrival_s for r in requests)


def test_trace_slices_start_where_asked() -> None:
    rows = [TraceRow(float(i), 10 * i, i) for i in range(50)]
    arrivals, sizes = suite.trace_slice(rows, 20, 5)
    assert arrivals == [20.0, 21.0, 22.0, 23.0, 24.0]
    assert sizes == [220.0, 231.0, 242.0, 253.0, 264.0]
    with pytest.raises(ValueError, match="does not fit"):
        suite.trace_slice(rows, 48, 5)


def test_policy_orders_form_a_balanced_latin_square() -> None:
    orders = suite.policy_orders()
    assert orders[0] == ["fifo", "sjf", "aging", "srtf"]
    names = set(suite.POLICY_NAMES)
    assert all(set(order) == names for order in orders)
    for position in range(4):
        assert {order[position] for order in orders} == names  # each policy once in every position
    followers = [(a, b) for order in orders for a, b in itertools.pairwise(order)]
    assert len(set(followers)) == len(followers) == 12  # each ordered pair once


def test_order_for_walks_the_rows_across_repeats_and_workloads() -> None:
    orders = suite.policy_orders()
    assert [suite.order_for(r, 0) for r in range(4)] == orders
    assert suite.order_for(0, 1) == orders[1]
    assert suite.order_for(3, 2) == orders[1]


def test_spread() -> None:
    assert suite.spread([0.5, 0.7, 0.4]) == {
        "n": 3,
        "median": 0.5,
        "min": 0.4,
        "max": 0.7,
        "spread": 0.3,
        "iqr": 0.3,
    }
    assert suite.spread([])["median"] is None
    assert suite.spread([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])["iqr"] == 4.0


CLEAN = suite.RunHealth(0.050, 0.052, 1.02, 0.004, 0.01)


@pytest.mark.parametrize(
    ("health", "reason"),
    [
        (CLEAN, None),
        (suite.RunHealth(0.050, 0.065, 1.0, 0.004, 0.0), "probe moved"),
        (suite.RunHealth(0.080, 0.085, 1.0, 0.004, 0.0), "vs baseline"),
        (suite.RunHealth(0.050, 0.050, 1.35, 0.004, 0.0), "model time 1.35x"),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 1.4), "moved 1.40x within the run"),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 0.7), "moved 0.70x within the run"),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 1.08), None),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 1.12), "moved 1.12x within the run"),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.009, 0.0), "per-message 9.0 ms"),
        (suite.RunHealth(0.050, 0.050, 1.0, None, 0.0), None),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.2), "sent 200 ms late"),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 1.0, 1.04), None),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 1.0, 1.07), "ran at 1.07x the asked load"),
        (suite.RunHealth(0.050, 0.050, 1.0, 0.004, 0.0, 1.0, 0.93), "ran at 0.93x the asked load"),
    ],
)
def test_starvation_detector(health: suite.RunHealth, reason: str | None) -> None:
    flags = suite.starvation_flags(health, baseline_probe_s=0.050, per_message_s=0.004, typical_s=0.05)
    if reason is None:
        assert flags == []
    else:
        assert len(flags) == 1 and reason in flags[0]


def test_back_to_back_cost_reads_only_requests_that_queued() -> None:
    # Ten requests sent at 0 and served back to back, 10 ms of model time and 4 ms between; one sent after the rest.
    queued = [{"sent": 0.0, "done": 0.014 * (i + 1), "model_s": 0.010} for i in range(11)]
    lone = {"sent": 1.0, "done": 1.02, "model_s": 0.010}
    assert suite.back_to_back_cost([*queued, lone]) == pytest.approx(0.004)
    assert suite.back_to_back_cost(queued[:5]) is None
    hiccup = [*queued[:10], {"sent": 0.0, "done": 0.14 + 0.114, "model_s": 0.010}]  # 100 ms lost before the last
    assert suite.back_to_back_cost(hiccup) == pytest.approx(0.004)
    assert suite.back_to_back_cost(hiccup, mean=True) == pytest.approx(0.004 + 0.1 / 10)


def test_lone_overhead_reads_only_requests_that_found_the_worker_idle() -> None:
    # Six lone requests 3 ms over their model time, then a burst whose later members queued.
    lone = [{"sent": float(i), "done": i + 0.013, "model_s": 0.010} for i in range(6)]
    burst = [{"sent": 10.0 + 0.001 * i, "done": 10.05 + 0.05 * i, "model_s": 0.010} for i in range(5)]
    assert suite.lone_overhead(lone + burst) == pytest.approx(0.003)
    assert suite.lone_overhead(burst) is None


def test_halves_ratio() -> None:
    assert suite.halves_ratio([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]) == 2.0
    assert suite.halves_ratio([1.0, 2.0, 3.0]) == 1.0  # too short to tell


def _run(
    repeat: int, policy: str, mean_ms: float, wait_ms: float, flags: list[str] | None = None, vs_sim: float = 1.0
) -> dict:
    return {
        "live_vs_sim": vs_sim,
        "repeat": repeat,
        "workload": "w",
        "policy": policy,
        "mean_ms": mean_ms,
        "max_wait_ms": wait_ms,
        "flags": flags or [],
    }


def test_summary_pairs_each_run_with_its_repeats_fifo_and_leaves_flagged_runs_out() -> None:
    runs = [
        _run(0, "fifo", 100.0, 1000.0),
        _run(0, "sjf", 50.0, 1500.0),
        _run(1, "fifo", 200.0, 1000.0),
        _run(1, "sjf", 120.0, 1000.0, vs_sim=1.3),
        _run(2, "fifo", 100.0, 1000.0),
        _run(2, "sjf", 500.0, 1000.0, ["probe moved"]),  # starved: not a result
        _run(3, "fifo", 100.0, 1000.0, ["model time 1.4x calibration"]),  # its repeat has no reference
        _run(3, "sjf", 40.0, 1000.0, vs_sim=1.2),
    ]
    sims = {
        ("w", "fifo"): {"mean_ms": 110.0, "max_wait_ms": 900.0},
        ("w", "sjf"): {"mean_ms": 40.0, "max_wait_ms": 1800.0},
    }
    fifo, sjf = suite.summarize_suite(runs, sims)
    assert sjf["runs"] == 4 and sjf["flagged"] == 1
    assert sjf["mean_vs_fifo"]["n"] == 2
    assert sjf["mean_vs_fifo"]["median"] == pytest.approx(0.55)
    assert sjf["mean_vs_fifo"]["spread"] == pytest.approx(0.1)
    assert sjf["max_wait_vs_fifo"]["median"] == pytest.approx(1.25)
    assert sjf["sim_mean_vs_fifo"] == 0.364
    assert sjf["live_mean_ms"] == 50.0  # median of the three clean runs
    assert sjf["live_vs_predicted"] == 1.25  # against the simulation from the calibration
    assert sjf["live_vs_sim"] == 1.2  # median of the clean runs' own (1.0, 1.3, 1.2)
    assert "mean > 0.6x FIFO where the simulation says <= 0.5x" not in sjf["misses"]
    assert "live more than 15% off the simulation" in sjf["misses"]
    assert fifo["flagged"] == 1 and fifo["mean_vs_fifo"]["median"] == 1.0


@pytest.mark.parametrize(
    ("policy", "ratio", "spread", "wait", "sim", "live_vs_sim", "expected"),
    [
        ("sjf", 0.55, 0.05, 1.5, 0.45, 1.0, []),
        ("sjf", 0.65, 0.05, 1.5, 0.45, 1.0, ["mean > 0.6x FIFO where the simulation says <= 0.5x"]),
        ("sjf", 0.65, 0.05, 1.5, 0.55, 1.0, []),
        ("sjf", 1.1, 0.2, 1.0, 0.9, 0.8, ["mean > 1.05x FIFO", "ratio spread >= 0.15", "live more than 15% off"]),
        ("srtf", 0.9, 0.3, 1.0, 0.9, 1.0, []),
        ("aging", 0.7, 0.05, 2.5, 0.6, 1.0, ["worst wait > 2x FIFO"]),
    ],
)
def test_misses(policy, ratio, spread, wait, sim, live_vs_sim, expected) -> None:
    line = {
        "policy": policy,
        "mean_vs_fifo": {"median": ratio, "spread": spread},
        "max_wait_vs_fifo": {"median": wait},
        "sim_mean_vs_fifo": sim,
        "live_vs_sim": live_vs_sim,
    }
    got = suite.misses(line)
    assert len(got) == len(expected)
    assert all(e in g for e, g in zip(expected, got, strict=True))


def test_a_retried_run_counts_its_last_attempt_and_reports_the_flagged_one() -> None:
    runs = [
        _run(0, "fifo", 100.0, 1000.0),
        _run(0, "sjf", 300.0, 1000.0, ["probe moved"]),
        _run(0, "sjf", 50.0, 1000.0),  # the retry, clean
    ]
    _, sjf = suite.summarize_suite(runs, {})
    assert (sjf["runs"], sjf["clean"], sjf["flagged"]) == (1, 1, 1)
    assert sjf["mean_vs_fifo"]["median"] == 0.5


def test_pace_is_the_fast_end_of_what_was_seen() -> None:
    pace = suite.Pace([0.05, 0.09, 0.06], [], [0.010])
    assert pace.probe_s() == 0.05
    assert pace.model_ratio() == 1.0  # nothing seen yet: the calibration
    for ratio, probe in ((0.7, 0.04), (1.3, 0.10), (0.75, 0.045)):
        pace.add(suite.RunHealth(probe, probe, ratio, 0.004, 0.0))
    assert pace.model_ratio() == 0.7
    assert pace.per_message_s() == 0.004
    assert pace.probe_s() == 0.045


def test_a_ratio_needs_both_runs_at_the_same_load() -> None:
    runs = [
        {**_run(0, "fifo", 100.0, 1000.0), "measured_load": 0.85},
        {**_run(0, "sjf", 50.0, 1000.0), "measured_load": 0.90},  # 6% above its FIFO run's load
        {**_run(1, "fifo", 100.0, 1000.0), "measured_load": 0.85},
        {**_run(1, "sjf", 60.0, 1000.0), "measured_load": 0.86},
    ]
    _, sjf = suite.summarize_suite(runs, {})
    assert sjf["load_mismatched"] == 1
    assert sjf["mean_vs_fifo"]["n"] == 1 and sjf["mean_vs_fifo"]["median"] == 0.6
    assert sjf["mean_vs_fifo_unchecked"]["n"] == 2 and sjf["mean_vs_fifo_unchecked"]["median"] == 0.55
    # Every repeat's run is listed with its figures, and a ratio only where it counted.
    assert [(r["repeat"], r["mean_vs_fifo"], r["measured_load"]) for r in sjf["per_repeat"]] == [
        (0, None, 0.90),
        (1, 0.6, 0.86),
    ]
    assert all(r["sim_vs_fifo"] is None for r in sjf["per_repeat"])  # the records carry no simulation


def test_per_repeat_lines_carry_the_pairs_simulated_ratio() -> None:
    runs = [
        {**_run(0, "fifo", 100.0, 1000.0), "sim_mean_ms": 110.0},
        {**_run(0, "sjf", 50.0, 1000.0), "sim_mean_ms": 44.0},
    ]
    _, sjf = suite.summarize_suite(runs, {})
    assert sjf["per_repeat"][0]["sim_vs_fifo"] == 0.4
    assert sjf["per_repeat"][0]["mean_vs_fifo"] == 0.5


def test_loads_apart() -> None:
    fifo = {"measured_load": 0.85}
    assert suite.loads_apart({"measured_load": 0.87}, fifo) is None
    assert "0.900 vs its FIFO run's 0.850" in (suite.loads_apart({"measured_load": 0.90}, fifo) or "")
    assert suite.loads_apart({"measured_load": 0.80}, fifo) is not None  # either way
    assert suite.loads_apart({}, fifo) is None  # an older record without the figure


def test_apart_from_fifo_names_the_clean_runs_that_need_a_run_beside_fifo() -> None:
    fifo = {"measured_load": 0.85, "flags": []}
    ran = {
        "sjf": {"measured_load": 0.90, "flags": []},  # clean, 6% off: to run again
        "aging": {"measured_load": 0.86, "flags": []},  # within 3%
        "srtf": {"measured_load": 0.95, "flags": ["probe moved"]},  # flagged already: it was retried as such
        "fifo": fifo,
    }
    assert suite.apart_from_fifo(ran, fifo) == ["sjf"]
    assert suite.apart_from_fifo(ran, {**fifo, "flags": ["probe moved"]}) == []  # nothing to match a starved FIFO


def test_a_single_ratio_has_no_spread_and_that_is_a_miss() -> None:
    assert suite.spread([0.5]) == {"n": 1, "median": 0.5, "min": 0.5, "max": 0.5, "spread": None, "iqr": None}
    line = {
        "policy": "sjf",
        "mean_vs_fifo": suite.spread([0.5]),
        "max_wait_vs_fifo": suite.spread([1.2]),
        "sim_mean_vs_fifo": 0.55,
    }
    assert suite.misses(line) == ["ratio spread not measured (fewer than 2 clean ratios)"]


def test_at_pace_stretches_the_clock_and_keeps_the_requests() -> None:
    arrivals, sizes = suite.poisson_heavy(4, 200)
    workload = suite.shape("w", arrivals, sizes, COST, load=0.85, mean_worker_s=0.03, max_rows=400)
    slower = suite.at_pace(workload, 1.2)
    assert [r.arrival_s for r in slower.requests] == pytest.approx([1.2 * r.arrival_s for r in workload.requests])
    same = [(r.size_tokens, r.service_s, r.size_class) for r in slower.requests]
    assert same == [(r.size_tokens, r.service_s, r.size_class) for r in workload.requests]
    assert (slower.name, slower.load) == (workload.name, workload.load)
    assert suite.offered(slower, COST) == pytest.approx(0.85 / 1.2)
    with pytest.raises(ValueError, match="positive"):
        suite.at_pace(workload, 0.0)


def test_arrival_scale_follows_the_latest_runs_pace() -> None:
    pace = suite.Pace([0.05], [], [0.004])
    assert pace.arrival_scale() == 1.0  # no run yet: the calibration
    for worker_pace in (1.0, 1.3, 1.1, 1.12, 2.4):
        pace.add(CLEAN, worker_pace=worker_pace)
    assert pace.arrival_scale() == 1.12  # median of 1.1, 1.12 and one starved 2.4
    pace.add(CLEAN)  # a run without the figure leaves the scale alone
    assert pace.arrival_scale() == 1.12


def test_stretched_arrivals_make_the_ratio_insensitive_to_the_workers_pace() -> None:
    """What the suite relies on, in the system's model: the same workload on a worker 20% slower moves SJF's ratio
    to FIFO a lot with the calibrated arrivals, next to nothing with the arrivals stretched by the same pace."""
    from bench import spread as spread_bench

    calibration = spread_bench.DEFAULT_CALIBRATION
    make, seed = spread_bench.HEAVY_TAILED["poisson-lognormal/0.85"]
    workload = spread_bench.build(make, seed, 200, calibration)
    calibrated = spread_bench.ratio(workload, calibration)
    fixed = spread_bench.ratio(workload, calibration, 1.2, 1.2)
    stretched = spread_bench.ratio(suite.at_pace(workload, 1.2), calibration, 1.2, 1.2)
    assert abs(fixed - calibrated) > 0.1
    assert abs(stretched - calibrated) < 0.02


def test_every_repeat_and_policy_gets_the_same_requests(tmp_path) -> None:
    """The suite's workloads are built once from fixed slices and seeds; building them again (as ``--summarize``
    does, or another repeat would) gives the very same requests, so repeats differ only in how the machine ran."""
    from bench.scheduling import suite_workloads

    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:00:{i * 0.05:09.6f},{100 + 37 * (i % 11)},{5 + i % 7}" for i in range(400)]
    trace = tmp_path / "t.csv"
    trace.write_text("\n".join(lines) + "\n")
    first = suite_workloads(trace, 100, COST, 0.03, 400)
    again = suite_workloads(trace, 100, COST, 0.03, 400)
    assert [w.name for w in first] == [w.name for w in again] and len(first) == 5
    assert all(a.requests == b.requests for a, b in zip(first, again, strict=True))
