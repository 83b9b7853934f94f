"""Tests of the trace loader and the scheduling simulator (bench.trace, bench.simulate) on small workloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from app.policies import Policy, PolicyParams
from bench.simulate import SimConfig, add_ratios, main, simulate, summarize
from bench.trace import Request, SizeClass, build_workload, load_trace, offered_load, quantile, time_scale_for_load

PARAMS = PolicyParams.around(0.1)


def _request(arrival_s: float, service_s: float) -> Request:
    return Request(arrival_s, int(service_s * 1000), service_s, SizeClass.MIDDLE)


def _run(policy: Policy, requests: list[Request], **config: object) -> list[float]:
    outcomes = simulate(requests, SimConfig(policy, PARAMS, oracle=True, **config))
    return [round(o.response_s, 9) for o in outcomes]


def _bursty(servers: int, seed: int = 7, count: int = 3000) -> list[Request]:
    """Lognormal sizes (mean 100 ms); Poisson arrivals at load 1.3 for the first half, then 0.4 (0.85 overall).

    The overload phase is what makes SJF starve its long requests, as bursts do in production traces.
    """
    rng = random.Random(seed)
    sizes = [rng.lognormvariate(0.0, 1.2) for _ in range(count)]
    services_s = [0.1 * size * count / sum(sizes) for size in sizes]
    short_max_s, long_min_s = quantile(services_s, 0.1), quantile(services_s, 0.9)
    arrival_s, requests = 0.0, []
    for i, service_s in enumerate(services_s):
        arrival_s += rng.expovariate((1.3 if i < count // 2 else 0.4) * servers / 0.1)
        size_class = SizeClass.MIDDLE
        if service_s <= short_max_s:
            size_class = SizeClass.SHORTEST
        elif service_s >= long_min_s:
            size_class = SizeClass.LONGEST
        requests.append(Request(arrival_s, int(service_s * 1000), service_s, size_class))
    return requests


@pytest.mark.parametrize(
    ("policy", "responses_s"),
    [
        # One server; a 1 s request runs first, then a 0.5 s one (t=0.1) and a 0.1 s one (t=0.2) wait for it.
        (Policy.FIFO, [1.0, 1.4, 1.4]),
        (Policy.SJF, [1.0, 1.5, 0.9]),
        (Policy.SRTF, [1.0, 1.5, 0.9]),
        (Policy.AGING, [1.0, 1.5, 0.9]),
    ],
)
def test_hand_checked_schedule(policy: Policy, responses_s: list[float]) -> None:
    requests = [_request(0.0, 1.0), _request(0.1, 0.5), _request(0.2, 0.1)]
    assert _run(policy, requests) == pytest.approx(responses_s)


@pytest.mark.parametrize(("servers", "responses_s"), [(1, [1.0, 1.9]), (2, [1.0, 1.0])])
def test_servers_work_in_parallel(servers: int, responses_s: list[float]) -> None:
    assert _run(Policy.FIFO, [_request(0.0, 1.0), _request(0.1, 1.0)], servers=servers) == pytest.approx(responses_s)


@pytest.mark.parametrize(("chunk_s", "responses_s"), [(None, [1.0, 1.05]), (0.2, [1.1, 0.25])])
def test_srtf_chunks_let_a_short_request_overtake(chunk_s: float | None, responses_s: list[float]) -> None:
    # Given a 1 s request in service, when a 0.1 s one arrives at 0.05 s, then with 0.2 s chunks it runs at the
    # first chunk boundary instead of after the whole long request.
    requests = [_request(0.0, 1.0), _request(0.05, 0.1)]
    assert _run(Policy.SRTF, requests, chunk_s=chunk_s) == pytest.approx(responses_s)


def test_aging_rescues_a_starved_request() -> None:
    # Given one long request behind a stream of short ones that keeps the server busy (SJF starves it), when the
    # aging beat runs, then the long request is promoted and served while the stream still flows.
    requests = [_request(0.0, 0.05), _request(0.001, 2.0)]
    requests += [_request(0.002 + 0.05 * i, 0.05) for i in range(400)]
    sjf_wait_s = _run(Policy.SJF, requests)[1]
    aging_wait_s = _run(Policy.AGING, requests, aging_period_s=0.1)[1]
    assert sjf_wait_s > 20.0
    # No backlog at its arrival, so it climbs on the plain clock: level 6 reaches 0 by 0.5 + 5 * 0.2 s.
    assert aging_wait_s < PARAMS.max_climb_s(6) + 0.1 + 2 * 0.05 + 2.0


def test_every_aging_copy_is_counted_and_a_dropped_copy_costs_server_time() -> None:
    # Given the starved request above promoted by aging, when each stale copy a server takes costs it 10 ms, then the
    # promotions are counted and the requests behind a dropped copy finish later than when dropping is free.
    requests = [_request(0.0, 0.05), _request(0.001, 2.0)]
    requests += [_request(0.002 + 0.05 * i, 0.05) for i in range(400)]
    free, charged = {}, {}
    free_s = sum(
        o.response_s for o in simulate(requests, SimConfig(Policy.AGING, PARAMS, aging_period_s=0.1, oracle=True), free)
    )
    charged_s = sum(
        o.response_s
        for o in simulate(
            requests, SimConfig(Policy.AGING, PARAMS, aging_period_s=0.1, oracle=True, stale_copy_s=0.01), charged
        )
    )
    assert free["promoted"] >= 1 and charged["promoted"] >= 1
    assert charged_s > free_s


@pytest.mark.parametrize("servers", [1, 2])
def test_policies_on_a_synthetic_workload(servers: int) -> None:
    requests = _bursty(servers)
    results = {}
    for policy in Policy:
        config = SimConfig(policy, PARAMS, servers=servers, aging_period_s=PARAMS.aging_step_s)
        outcomes = simulate(requests, config)
        assert len(outcomes) == len(requests)
        assert min(o.wait_s for o in outcomes) >= -1e-9
        results[policy] = summarize(config, outcomes)
    fifo = results[Policy.FIFO]
    ratios = {policy: add_ratios(dict(summary), fifo) for policy, summary in results.items()}
    # The live system's targets, with the margin the simulator shows here (0.15x, 0.07x, 0.33x and 1.6x).
    assert ratios[Policy.SJF]["mean_vs_fifo"] <= 0.5
    assert ratios[Policy.SRTF]["shortest_p99_vs_fifo"] <= 0.3
    assert ratios[Policy.AGING]["mean_vs_fifo"] <= 0.6
    assert ratios[Policy.AGING]["max_wait_vs_fifo"] <= 2.0
    # SJF alone starves the long requests of the burst; aging is what bounds them.
    assert ratios[Policy.SJF]["max_wait_vs_fifo"] > 3.0


def test_simulate_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="servers"):
        simulate([_request(0.0, 1.0)], SimConfig(Policy.FIFO, PARAMS, servers=0))
    with pytest.raises(ValueError, match="aging_period_s"):
        simulate([_request(0.0, 1.0)], SimConfig(Policy.AGING, PARAMS, aging_period_s=0.0))


def _write_trace(path: Path, rows: int = 400, seed: int = 3) -> Path:
    rng = random.Random(seed)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(rows):
        second = i * 0.25
        stamp = f"2023-11-16 18:{int(second // 60):02d}:{second % 60:010.7f}"
        lines.append(f"{stamp},{rng.choice([50, 100, 2000, 6000])},{rng.randint(5, 50)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("servers", "load"), [(1, 0.85), (2, 0.85), (3, 0.5)])
def test_workload_hits_the_offered_load(tmp_path: Path, servers: int, load: float) -> None:
    rows = load_trace(_write_trace(tmp_path / "t.csv"))
    requests = build_workload(rows, servers=servers, load=load, mean_service_ms=40.0)
    assert offered_load(requests, servers) == pytest.approx(load)
    assert sum(r.service_s for r in requests) / len(requests) == pytest.approx(0.040)
    assert requests[0].arrival_s == 0.0
    shortest = [r.service_s for r in requests if r.size_class is SizeClass.SHORTEST]
    longest = [r.service_s for r in requests if r.size_class is SizeClass.LONGEST]
    assert shortest and longest and max(shortest) < min(longest)


def test_load_trace_names_what_is_wrong(tmp_path: Path) -> None:
    bad_columns = tmp_path / "cols.csv"
    bad_columns.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:00:00,5\n")
    with pytest.raises(ValueError, match="GeneratedTokens"):
        load_trace(bad_columns)
    bad_row = tmp_path / "row.csv"
    bad_row.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,5,x\n")
    with pytest.raises(ValueError, match="line 2"):
        load_trace(bad_row)


@pytest.mark.parametrize(("values", "q", "expected"), [([3, 1, 2], 0.5, 2), ([1, 2, 3, 4], 0.99, 4), ([5], 0.0, 5)])
def test_quantile(values: list[float], q: float, expected: float) -> None:
    assert quantile(values, q) == expected


def test_time_scale_rejects_nonsense() -> None:
    assert time_scale_for_load(100.0, 1001, 0.1, 1, 0.5) == pytest.approx(2.002)
    with pytest.raises(ValueError, match="load"):
        time_scale_for_load(100.0, 1000, 0.1, 1, 0.0)


def test_main_prints_one_json_line_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _write_trace(tmp_path / "t.csv")
    assert main(["--trace", str(trace), "--servers", "2", "--policies", "sjf,aging"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["policy"] for line in lines] == ["fifo", "sjf", "aging"]
    for line in lines:
        for key in ("mean_ms", "p50_ms", "p99_ms", "max_wait_ms", "shortest", "longest", "mean_vs_fifo"):
            assert key in line
        assert line["servers"] == 2


def test_main_refuses_an_unknown_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", str(_write_trace(tmp_path / "t.csv")), "--policies", "lifo"]) == 2
    assert "unknown scheduling policy 'lifo'" in capsys.readouterr().err


def test_per_message_cost_holds_the_worker_and_latency_only_the_response() -> None:
    # 10 ms a message besides the model; 4 ms of it comes after the result (latency -4 ms). Two 100 ms requests at 0:
    # the first answers at 110 - 4 ms, the second starts at 110 ms and answers at 220 - 4 ms.
    requests = [_request(0.0, 0.1), _request(0.0, 0.1)]
    config = SimConfig(Policy.FIFO, PARAMS, oracle=True, per_message_s=0.010, latency_s=-0.004)
    outcomes = simulate(requests, config)
    assert [round(o.response_s, 9) for o in outcomes] == pytest.approx([0.106, 0.216])
    assert [round(o.wait_s, 9) for o in outcomes] == pytest.approx([0.006, 0.116])
