"""``python -m bench.scheduling``: the scheduling policies on the live system, replaying a real request trace.

A slice of ``shared/traces/azure_llm_code_2023.csv`` (or ``--trace PATH``, same columns) is replayed through one
solo worker: each request is sent at its (compressed) arrival time to a model whose run time follows the request
size (``bench.models.wide_mlp``, rows proportional to the trace's total tokens), with arrivals compressed so the
offered load is ``--load`` (0.85) of the worker's measured capacity. Every policy runs on the same arrivals, one
after the other, with the beat process running (aging needs it). Response time is from the client's send to the
worker's result; the wait is the response less the model's own run time.

The arrivals are compressed from a calibration of the live path (a + b x rows at saturation). The same arrivals
then go through ``bench.simulate``'s discrete-event model of the fleet, with each request's service time as the
live FIFO run measured it (model time plus the per-message cost read off back-to-back completions), so the live
figures can be checked against what the model of the system predicts; ``measured_load`` is the offered load
those measured times give.

Each trace request is one message, so under SRTF a request is a single chunk and is ordered like SJF (the
preemption of long jobs at chunk boundaries is what ``maas job`` adds; tests/integration/test_scheduling.py shows
it). Prints one JSON line per policy.

``--suite`` (``--quick`` for a smaller one) is what the figures are quoted from: five workloads (three slices of the
trace from different rows at loads 0.6 / 0.85 / 0.95, Poisson arrivals with lognormal sizes, a Markov-modulated
bursty stream with Pareto sizes; ``bench.suite``), every policy on the same requests, interleaved in a balanced
order and repeated (4 times: once through the Latin square), each run between two probes of the machine's pace.
Each run's arrivals are stretched by the worker's pace in the latest runs, so that it gets the load asked at the
pace it runs at. A run whose worker was starved (the probes, the worker's model time or its per-message cost off
the machine's unstarved pace, or moving during the run), or that still ran more than 5% off the asked load, or
more than 3% off its repeat's FIFO run's load, is flagged, retried once, and left out of the medians (a run that
came before its FIFO run and turned out too far from its load runs once more after it). Each run is
also simulated with the service times it measured, which checks the model of the system apart from the machine's
pace; the prediction from the calibration alone is printed beside it. Prints the calibration, one JSON line per
run, one per workload and policy (every repeat's run and ratio, median and spread (max - min) of the ratio to FIFO
in the same repeat, live vs simulated, flagged runs, targets missed), and a Markdown table on stderr. About 22
minutes on a quiet machine (80 runs of about 15 s, plus retries); ``--quick`` about 12.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from celery.result import AsyncResult

from app import policies, registry
from app.broker import aging_index
from app.broker.layout import model_queue
from app.db.session import session_scope
from app.signature import encode_tensor
from bench import suite
from bench.fleet import BenchFleet
from bench.models import wide_mlp
from bench.simulate import SimConfig, add_ratios, simulate, summarize
from bench.trace import DEFAULT_TRACE_PATH, Request, SizeClass, load_trace, quantile

MODEL = "trace"
IN_WIDTH = 16


def calibrate(fleet: BenchFleet, rows_small: int, rows_large: int, n: int = 60) -> tuple[float, float]:
    """Seconds per request through the whole path at saturation, as a + b x rows.

    Measured while the client is still sending, as it is during a replay: on two shared cores the producer's own
    work (encoding large requests) takes CPU from the worker, and a calibration with an idle client
    overestimated capacity by about 10%, which at load 0.85 made every live wait longer than the simulated one.
    """
    client = fleet.client
    per_request = {}
    for rows in (rows_small, rows_large):
        x = np.zeros((rows, IN_WIDTH), dtype=np.float32)
        handles = [client.infer(MODEL, {"x": x}, priority=1) for _ in range(n)]
        for h in handles:
            h.wait(timeout_s=120)
        done = sorted(AsyncResult(h.id, app=client.app).date_done.timestamp() for h in handles)
        skip = n // 6  # the first ones finish before a backlog has built up
        per_request[rows] = (done[-1] - done[skip]) / (n - 1 - skip)
    b = (per_request[rows_large] - per_request[rows_small]) / (rows_large - rows_small)
    return per_request[rows_small] - b * rows_small, b


def stale_copy_cost(fleet: BenchFleet, rows: int, n: int = 60) -> float:
    """Seconds the worker spends taking and dropping one superseded copy of an answered aging request.

    Aging leaves one such copy per promotion (the original, or an earlier promoted copy). Measured as the extra
    time a request takes behind ``n`` copies of an answered request carrying a body of ``rows`` rows, over the
    same request alone; each measured 3 times, median.
    """
    client = fleet.client
    x = np.zeros((rows, IN_WIDTH), dtype=np.float32)
    answered = client.infer(MODEL, {"x": x}, priority=1)
    answered.wait(timeout_s=60)
    body = [encode_tensor("x", x)]

    def behind(copies: int) -> float:
        t0 = time.time()
        for _ in range(copies):
            client.app.send_task(
                "maas.infer",
                args=[MODEL, None, body],
                kwargs={"dedup": True},
                queue=model_queue(MODEL),
                priority=1,
                task_id=answered.id,
            )
        last = client.infer(MODEL, {"x": x}, priority=1)
        last.wait(timeout_s=120)
        return AsyncResult(last.id, app=client.app).date_done.timestamp() - t0

    alone = statistics.median(behind(0) for _ in range(3))
    crowded = statistics.median(behind(n) for _ in range(3))
    return max(0.0, (crowded - alone) / n)


def workload(trace: Path, count: int, tokens_per_row: int, max_rows: int, a: float, b: float, load: float):
    """Requests (arrival, rows, calibrated service, size class) for the first ``count`` trace rows."""
    rows_in = load_trace(trace)[:count]
    sizes = [max(1, min(max_rows, round((r.context_tokens + r.generated_tokens) / tokens_per_row))) for r in rows_in]
    services = [a + b * s for s in sizes]
    span_s = rows_in[-1].arrival_s - rows_in[0].arrival_s
    scale = sum(services) / (load * span_s)  # offered load = total work / span, on one server
    short_max, long_min = quantile(services, 0.1), quantile(services, 0.9)

    def size_class(service_s: float) -> SizeClass:
        if service_s <= short_max:
            return SizeClass.SHORTEST
        return SizeClass.LONGEST if service_s >= long_min else SizeClass.MIDDLE

    return [
        Request((r.arrival_s - rows_in[0].arrival_s) * scale, s, svc, size_class(svc))
        for r, s, svc in zip(rows_in, sizes, services, strict=True)
    ]


def replay(fleet: BenchFleet, requests: list[Request]) -> list[dict]:
    """Send each request at its arrival time; return response, wait and class per request."""
    client = fleet.client
    rng = np.random.default_rng(0)
    bodies = [{"x": rng.standard_normal((r.size_tokens, IN_WIDTH)).astype(np.float32)} for r in requests]
    sent: list[tuple[float, object]] = []
    start = time.time() + 0.5
    for request, body in zip(requests, bodies, strict=True):
        delay = start + request.arrival_s - time.time()
        if delay > 0:
            time.sleep(delay)
        sent.append((time.time(), client.infer(MODEL, body)))
    results = []
    for (t0, handle), request in zip(sent, requests, strict=True):
        late_s = t0 - (start + request.arrival_s)
        answer = handle.wait(timeout_s=600)
        done = AsyncResult(handle.id, app=client.app).date_done.timestamp()
        response_s = done - t0
        model_s = answer["parameters"]["service_ms"] / 1000
        results.append(
            {
                "response_s": response_s,
                "wait_s": max(0.0, response_s - model_s),
                "size_class": request.size_class,
                "sent": t0,
                "done": done,
                "model_s": model_s,
                "rows": request.size_tokens,
                "late_s": late_s,
            }
        )
    return results


def measured_workload(requests: list[Request], fifo: list[dict]) -> tuple[list[Request], float]:
    """The same arrivals with each request's service time as the live FIFO run measured it.

    A worker's time per request is the model's own run time plus a per-message cost (fetch, decode, result,
    acknowledgement, events). That cost is read off the FIFO run: for two requests served back to back (the next one
    was already waiting when the previous finished), the gap between their completions less the model time.
    """
    by_done = sorted(fifo, key=lambda r: r["done"])
    gaps = [
        cur["done"] - prev["done"] - cur["model_s"]
        for prev, cur in zip(by_done, by_done[1:], strict=False)
        if cur["sent"] < prev["done"]
    ]
    overhead_s = statistics.median(gaps) if gaps else 0.0
    measured = [
        Request(q.arrival_s, q.size_tokens, r["model_s"] + overhead_s, q.size_class)
        for q, r in zip(requests, fifo, strict=True)
    ]
    return measured, overhead_s


def figures(results: list[dict]) -> dict:
    ms = [r["response_s"] * 1000 for r in results]
    return {
        "n": len(ms),
        "mean_ms": round(statistics.fmean(ms), 3),
        "p50_ms": round(quantile(ms, 0.5), 3),
        "p99_ms": round(quantile(ms, 0.99), 3),
        "max_wait_ms": round(max(r["wait_s"] for r in results) * 1000, 3),
    }


def run(args: argparse.Namespace) -> None:
    env = {
        "MAAS_TYPICAL_SERVICE_S": "0.05",
        "MAAS_AGING_PERIOD_S": str(args.aging_period_s),
        "MAAS_ALLOCATION": "false",
        "MAAS_VIRTUAL_DEVICES": "1x4GiB",
        "MAAS_WORKER_SYSTEM_TASKS": "false",
    }
    with BenchFleet(**env) as fleet, tempfile.TemporaryDirectory() as tmp:
        fleet.register(MODEL, wide_mlp(Path(tmp) / "trace.onnx", in_width=IN_WIDTH), service_ms=10)
        fleet.worker(0, "bench0@local")
        client = fleet.client
        client.load(MODEL).wait()
        a, b = calibrate(fleet, 1, args.max_rows)
        stale_s = stale_copy_cost(fleet, args.max_rows // 8)
        time.sleep(1.5)  # the worker ships the calibration's service times, which the estimator learns from
        requests = workload(Path(args.trace), args.requests, args.tokens_per_row, args.max_rows, a, b, args.load)
        # Size bands and the aging clock follow the workload's typical (mean) service time, as an operator sets
        # MAAS_TYPICAL_SERVICE_S from the fleet's measured mean: for the producer here, for the beat's aging task.
        typical_s = statistics.fmean(r.service_s for r in requests)
        fleet.env["MAAS_TYPICAL_SERVICE_S"] = f"{typical_s:.4f}"
        params = policies.PolicyParams.around(typical_s)
        client.scheduler.params = params
        # Beat's tasks (aging passes every --aging-period-s) run on a controller, off the one serving worker. It
        # starts only now, so that its aging pass reads the same typical time as the producer and the simulation.
        fleet.controller()
        fleet.beat()
        fifo_live = fifo_sim = None
        simulated = None
        for policy in ("fifo", "sjf", "srtf", "aging"):
            with session_scope(fleet.settings.sqlalchemy_url) as session:
                registry.configure(session, MODEL, policy=policy)
            client.scheduler.invalidate(MODEL)
            promoted_before = aging_index.promotions(client._redis, MODEL)
            results = replay(fleet, requests)
            live_promoted = aging_index.promotions(client._redis, MODEL) - promoted_before
            if simulated is None:  # the FIFO run measures what each request costs the worker
                simulated, overhead_s = measured_workload(requests, results)
                span_s = simulated[-1].arrival_s - simulated[0].arrival_s
                actual_load = sum(r.service_s for r in simulated) / span_s
            live = {"policy": policy, **figures(results)}
            for cls in (SizeClass.SHORTEST, SizeClass.LONGEST):
                live[cls.value] = figures([r for r in results if r["size_class"] is cls])
            # The live estimator has learned from every earlier run (FIFO's included) by the time SJF runs; the
            # simulated one starts from what FIFO measured, not from nothing.
            warm = tuple((r.size_tokens, r.service_s) for r in simulated)
            config = SimConfig(
                policies.Policy(policy), params, 1, None, args.aging_period_s, stale_copy_s=stale_s, warm_start=warm
            )
            counts: dict[str, int] = {}
            sim = summarize(config, simulate(simulated, config, counts))
            fifo_live, fifo_sim = fifo_live or live, fifo_sim or sim
            add_ratios(live, fifo_live)
            add_ratios(sim, fifo_sim)
            live.update(
                sim_mean_ms=sim["mean_ms"],
                sim_p99_ms=sim["p99_ms"],
                sim_mean_vs_fifo=sim["mean_vs_fifo"],
                live_vs_sim_mean=round(live["mean_ms"] / sim["mean_ms"], 3),
                requests=len(requests),
                load=args.load,
                measured_load=round(actual_load, 3),
                per_message_ms=round(overhead_s * 1000, 3),
                stale_copy_ms=round(stale_s * 1000, 3),
                live_promoted=live_promoted,
                sim_promoted=counts.get("promoted", 0),
                calibrated_ms=[round(a * 1000, 3), round(b * 1000, 4)],
                aging_period_s=args.aging_period_s,
                typical_service_ms=round(typical_s * 1000, 1),
            )
            print(json.dumps(live), flush=True)
            time.sleep(1.0)


# Four repeats: one pass through the 4 x 4 Latin square of run orders, so that every policy runs once in every
# position on every workload.
SUITE_FULL = {"requests": 200, "repeats": 4}
SUITE_QUICK = {"requests": 80, "repeats": 4}


def suite_workloads(trace: Path, count: int, cost: suite.ServiceModel, mean_worker_s: float, max_rows: int):
    """The suite's workloads: three slices of the trace from different rows at loads 0.6 / 0.85 / 0.95, Poisson
    arrivals with lognormal sizes, and a bursty MMPP stream with Pareto sizes, both at 0.85."""
    rows = load_trace(trace)
    spec = []
    for fraction, load in ((0.1, 0.6), (0.45, 0.85), (0.8, 0.95)):
        start = round(fraction * (len(rows) - count))
        spec.append((f"trace@{start}/{load}", suite.trace_slice(rows, start, count), load))
    spec.append(("poisson-lognormal/0.85", suite.poisson_heavy(11, count, "lognormal"), 0.85))
    spec.append(("mmpp-pareto/0.85", suite.mmpp(12, count), 0.85))
    return [
        suite.shape(name, arrivals, sizes, cost, load=load, mean_worker_s=mean_worker_s, max_rows=max_rows)
        for name, (arrivals, sizes), load in spec
    ]


def calibrate_service(fleet: BenchFleet, rows_list: tuple[int, ...], n: int = 24):
    """The model's run time at each of ``rows_list`` (median of what the worker reports) and the per-message cost
    (worker time per request at saturation less the model time); also the (rows, model s) observations, for the
    simulated estimator's warm start.

    The sizes are sent mixed, in a seeded shuffle, as a replay sends them: in the first suite run, calibrated one size
    at a time (a burst of identical requests), the replays' unstarved runs then measured their model time at 1.05-1.11x
    the calibration; at load 0.85 that much more work makes waits markedly longer than the calibration predicts.
    """
    client = fleet.client
    sizes = [rows for rows in rows_list for _ in range(n)]
    np.random.default_rng(0).shuffle(sizes)
    xs = {rows: np.zeros((rows, IN_WIDTH), dtype=np.float32) for rows in rows_list}
    handles = [(rows, client.infer(MODEL, {"x": xs[rows]}, priority=1)) for rows in sizes]
    served = []
    for rows, h in handles:
        model_s = h.wait(timeout_s=120)["parameters"]["service_ms"] / 1000
        served.append((AsyncResult(h.id, app=client.app).date_done.timestamp(), rows, model_s))
    served.sort()
    window = served[len(served) // 6 :]  # the first ones finish before a backlog has built up
    per_request = (window[-1][0] - window[0][0]) / (len(window) - 1)
    per_message = per_request - statistics.fmean(m for _, _, m in window[1:])
    points = tuple((rows, statistics.median(m for _, r, m in window if r == rows)) for rows in rows_list)
    return suite.ServiceModel(points, per_message), tuple((rows, m) for _, rows, m in served)


def idle_latency(fleet: BenchFleet, cost: suite.ServiceModel, rows: int, n: int = 15) -> float:
    """What a lone request's response adds to its model time and the per-message cost (median of ``n``)."""
    client = fleet.client
    x = np.zeros((rows, IN_WIDTH), dtype=np.float32)
    extra = []
    for _ in range(n):
        t0 = time.time()
        handle = client.infer(MODEL, {"x": x}, priority=1)
        model_s = handle.wait(timeout_s=60)["parameters"]["service_ms"] / 1000
        done = AsyncResult(handle.id, app=client.app).date_done.timestamp()
        extra.append(done - t0 - model_s - cost.per_message_s)
    return statistics.median(extra)


def probe(fleet: BenchFleet, rows: int, n: int = 16) -> float:
    """Seconds per request of a burst of ``n`` identical requests: the machine's pace now, for the detector.

    The median gap between consecutive completions, not the burst's span over its count: one hiccup of the client or
    of Redis (a few hundred ms) moved the span of a 12-request probe by 30% and flagged runs whose worker had kept a
    steady pace throughout.
    """
    client = fleet.client
    x = np.zeros((rows, IN_WIDTH), dtype=np.float32)
    handles = [client.infer(MODEL, {"x": x}, priority=1) for _ in range(n)]
    for h in handles:
        h.wait(timeout_s=60)
    done = sorted(AsyncResult(h.id, app=client.app).date_done.timestamp() for h in handles)
    return statistics.median(b - a for a, b in zip(done[2:], done[3:], strict=False))


def one_run(
    fleet: BenchFleet,
    w: suite.Workload,
    policy: str,
    cost: suite.ServiceModel,
    probe_rows: int,
    pace: suite.Pace,
    typical_s: float,
    sim_config: SimConfig,
) -> dict:
    """Replay ``w`` under ``policy`` between two probes, its arrivals stretched to the worker's recent pace; its
    figures, the simulation of the same run (``sim_config`` with this policy) and the starvation detector's verdict
    against ``pace``, which then learns from this run."""
    client = fleet.client
    with session_scope(fleet.settings.sqlalchemy_url) as session:
        registry.configure(session, MODEL, policy=policy)
    client.scheduler.invalidate(MODEL)
    scale = pace.arrival_scale()
    sent = suite.at_pace(w, scale)
    before = probe(fleet, probe_rows)
    results = replay(fleet, list(sent.requests))
    after = probe(fleet, probe_rows)
    model_ratios = [r["model_s"] / max(cost.model_s(r["rows"]), 1e-6) for r in results]
    # The per-message cost and the latency as this run measured them (back-to-back gaps; requests that found the
    # worker idle), falling back to the calibration's: the machine's pace moves between runs, by 2x at times here.
    per_msg = suite.back_to_back_cost(results)
    mean_per_msg = suite.back_to_back_cost(results, mean=True)
    per_msg_s = cost.per_message_s if mean_per_msg is None else mean_per_msg
    lone = suite.lone_overhead(results)
    latency_s = cost.latency_s if lone is None else lone - per_msg_s
    measured_load = sum(r["model_s"] + per_msg_s for r in results) / sent.span_s
    health = suite.RunHealth(
        before,
        after,
        statistics.median(model_ratios),
        per_msg,
        max(r["late_s"] for r in results),
        suite.halves_ratio(model_ratios),
        measured_load / w.load,
    )
    flags = suite.starvation_flags(
        health, pace.probe_s(), pace.per_message_s(), typical_s, model_ref=pace.model_ratio()
    )
    pace.add(health, worker_pace=measured_load / suite.offered(sent, cost))
    # The system's model on this run: the same arrivals as sent, each request's service time as the worker measured
    # it, the run's own per-message cost; what differs from live is then the model of the system, not the machine.
    replayed = [
        Request(q.arrival_s + r["late_s"], q.size_tokens, r["model_s"], q.size_class)
        for q, r in zip(sent.requests, results, strict=True)
    ]
    config = replace(sim_config, per_message_s=per_msg_s, latency_s=latency_s)
    sim_ms = summarize(config, simulate(replayed, config))["mean_ms"]
    mean_ms = statistics.fmean(r["response_s"] for r in results) * 1000
    return {
        "workload": w.name,
        "policy": policy,
        **figures(results),
        "arrival_scale": round(scale, 3),
        "probe_ms": [round(before * 1000, 2), round(after * 1000, 2)],
        "model_vs_calibration": round(health.model_ratio, 3),
        "per_message_ms": None if per_msg is None else round(per_msg * 1000, 2),
        "send_late_ms": round(health.send_late_s * 1000, 1),
        "model_second_half_vs_first": round(health.model_drift, 3),
        "measured_load": round(measured_load, 3),
        "lone_overhead_ms": None if lone is None else round(lone * 1000, 2),
        "sim_mean_ms": sim_ms,
        "live_vs_sim": round(mean_ms / sim_ms, 3),
        "flags": flags,
    }


@dataclass
class Attempts:
    """The suite's runs so far, every attempt in the order they ran, and what a new one needs."""

    fleet: BenchFleet
    cost: suite.ServiceModel
    probe_rows: int
    pace: suite.Pace
    typical_s: float
    sim_configs: dict[str, SimConfig]
    started: float
    runs: list[dict] = field(default_factory=list)

    def settle(self) -> None:
        """After a flagged attempt: let the machine settle (a few probes at most) before the next."""
        for _ in range(5):
            if probe(self.fleet, self.probe_rows) <= suite.Limits().probe_slow * self.pace.probe_s():
                break

    def run(self, w: suite.Workload, policy: str, repeat: int, tries: int, fifo_run: dict | None) -> dict:
        """``policy`` on ``w`` until an attempt comes out clean, at most ``tries`` (>= 1) attempts; the last one.

        An attempt at a load too far from its repeat's FIFO run (``fifo_run``, once that has run) is flagged: it
        would not make a ratio of policies, so it is retried like a starved one.
        """
        if tries < 1:
            raise ValueError(f"need at least one attempt, got {tries}")
        record: dict = {}
        for _ in range(tries):
            key = (w.name, policy, repeat)
            attempt = sum(1 for r in self.runs if (r["workload"], r["policy"], r["repeat"]) == key)
            if attempt:
                self.settle()
            config = self.sim_configs[policy]
            record = one_run(self.fleet, w, policy, self.cost, self.probe_rows, self.pace, self.typical_s, config)
            if fifo_run is not None and policy != "fifo" and not fifo_run["flags"] and not record["flags"]:
                apart = suite.loads_apart(record, fifo_run)
                record["flags"] += [apart] if apart else []
            record.update(repeat=repeat, attempt=attempt, elapsed_s=round(time.time() - self.started, 1))
            self.runs.append(record)
            print(json.dumps(record), flush=True)
            if not record["flags"]:
                break
        return record


def run_suite(args: argparse.Namespace) -> None:
    size = SUITE_QUICK if args.quick else SUITE_FULL
    count = args.requests if args.requests_given else size["requests"]
    repeats = args.repeats or size["repeats"]
    typical_s = args.mean_service_ms / 1000
    env = {
        "MAAS_TYPICAL_SERVICE_S": f"{typical_s:.4f}",
        "MAAS_AGING_PERIOD_S": str(args.aging_period_s),
        "MAAS_ALLOCATION": "false",
        "MAAS_VIRTUAL_DEVICES": "1x4GiB",
        "MAAS_WORKER_SYSTEM_TASKS": "false",
    }
    started = time.time()
    with BenchFleet(**env) as fleet, tempfile.TemporaryDirectory() as tmp:
        fleet.register(MODEL, wide_mlp(Path(tmp) / "trace.onnx", in_width=IN_WIDTH), service_ms=10)
        fleet.worker(0, "bench0@local")
        client = fleet.client
        client.load(MODEL).wait()
        probe(fleet, 32)  # warm-up: first runs of the model and the path
        # Three rounds, each size at its fastest: a round run while the machine is starved sets every load too low
        # (one here came out 1.5x slow, and the "0.85" runs it set up were at about 0.6 of the worker's real pace).
        rounds = [calibrate_service(fleet, (1, 8, 32, 128, args.max_rows // 2)) for _ in range(3)]
        points = tuple((r, min(c.model_s(r) for c, _ in rounds)) for r, _ in rounds[0][0].points)
        cost = suite.ServiceModel(points, min(c.per_message_s for c, _ in rounds))
        observed = tuple(o for _, obs in rounds for o in obs)
        probe_rows = cost.rows_for(typical_s)
        cost = suite.ServiceModel(cost.points, cost.per_message_s, idle_latency(fleet, cost, 16))
        stale_s = stale_copy_cost(fleet, probe_rows, n=30)
        pace = suite.Pace([probe(fleet, probe_rows) for _ in range(3)], [], [cost.per_message_s])
        baseline = pace.probe_s()
        workloads = suite_workloads(Path(args.trace), count, cost, typical_s, args.max_rows)
        params = policies.PolicyParams.around(typical_s)
        client.scheduler.params = params
        fleet.controller()
        fleet.beat()
        header = {
            "suite": "quick" if args.quick else "full",
            "requests": count,
            "repeats": repeats,
            "model_ms": {rows: round(s * 1000, 3) for rows, s in cost.points},
            "per_message_ms": round(cost.per_message_s * 1000, 3),
            "latency_ms": round(cost.latency_s * 1000, 3),
            "stale_copy_ms": round(stale_s * 1000, 3),
            "probe_rows": probe_rows,
            "baseline_probe_ms": round(baseline * 1000, 3),
            "typical_service_ms": args.mean_service_ms,
            "max_rows": args.max_rows,
            "aging_period_s": args.aging_period_s,
            "workloads": {
                w.name: {"offered": round(suite.offered(w, cost), 3), "span_s": round(w.span_s, 1)} for w in workloads
            },
        }
        print(json.dumps(header), flush=True)
        sim_configs = suite_sim_configs(params, args.aging_period_s, stale_s, observed, cost)
        sims = predicted(workloads, sim_configs)
        attempts = Attempts(fleet, cost, probe_rows, pace, typical_s, sim_configs, started)
        for repeat in range(repeats):
            for index, w in enumerate(workloads):
                ran: dict[str, dict] = {}  # this repeat's latest run of each policy on this workload
                for policy in suite.order_for(repeat, index):
                    ran[policy] = attempts.run(w, policy, repeat, 1 + args.retries, ran.get("fifo"))
                    if policy == "fifo" and args.retries:
                        # The runs that came before FIFO's in this repeat had no FIFO run to match; one that ran
                        # at a load too far from it runs again now, beside it.
                        for earlier in suite.apart_from_fifo(ran, ran["fifo"]):
                            ran[earlier] = attempts.run(w, earlier, repeat, args.retries, ran["fifo"])
        print(
            json.dumps(
                {
                    "unstarved_probe_ms": round(pace.probe_s() * 1000, 2),
                    "unstarved_model_ratio": round(pace.model_ratio(), 3),
                    "unstarved_per_message_ms": round(pace.per_message_s() * 1000, 2),
                }
            ),
            flush=True,
        )
        lines = suite.summarize_suite(attempts.runs, sims)
        for line in lines:
            print(json.dumps(line), flush=True)
        print(suite_table(lines), file=sys.stderr, flush=True)


def suite_sim_configs(
    params: policies.PolicyParams,
    aging_period_s: float,
    stale_s: float,
    observed: tuple[tuple[int, float], ...],
    cost: suite.ServiceModel,
) -> dict[str, SimConfig]:
    return {
        policy: SimConfig(
            policies.Policy(policy),
            params,
            1,
            None,
            aging_period_s,
            stale_copy_s=stale_s,
            warm_start=observed,
            per_message_s=cost.per_message_s,
            latency_s=cost.latency_s,
        )
        for policy in suite.POLICY_NAMES
    }


def predicted(workloads: list[suite.Workload], configs: dict[str, SimConfig]) -> dict[tuple[str, str], dict]:
    """What the model predicts from the calibration alone, before any run: the figures the targets' "where the
    simulation says" refers to."""
    return {
        (w.name, policy): summarize(config, simulate(list(w.requests), config))
        for w in workloads
        for policy, config in configs.items()
    }


def summarize_file(path: Path, args: argparse.Namespace) -> None:
    """The summary of a suite's saved output (its stdout, JSON lines), complete or cut short: the per-run lines as
    they are, the predictions recomputed from its calibration line (the estimator's warm start then being the
    calibration's medians, 24 of each size, rather than every observation)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header = records[0]
    runs = [r for r in records if "repeat" in r]
    cost = suite.ServiceModel(
        tuple((int(rows), ms / 1000) for rows, ms in header["model_ms"].items()),
        header["per_message_ms"] / 1000,
        header["latency_ms"] / 1000,
    )
    typical_s = header["typical_service_ms"] / 1000
    count = header["requests"]
    workloads = suite_workloads(Path(args.trace), count, cost, typical_s, header.get("max_rows", args.max_rows))
    warm = tuple((rows, s) for rows, s in cost.points for _ in range(24))
    period_s = header.get("aging_period_s", args.aging_period_s)
    configs = suite_sim_configs(
        policies.PolicyParams.around(typical_s), period_s, header["stale_copy_ms"] / 1000, warm, cost
    )
    lines = suite.summarize_suite(runs, predicted(workloads, configs))
    for line in lines:
        print(json.dumps(line), flush=True)
    print(suite_table(lines), file=sys.stderr, flush=True)


def suite_table(lines: list[dict]) -> str:
    """The summary as a Markdown table (to stderr, so stdout stays JSON lines)."""
    out = [
        "| workload | policy | measured load | mean vs FIFO, median (min-max) | spread | worst wait vs FIFO "
        "| simulated vs FIFO | every run, flagged included (not a result) "
        "| live / simulated (/ predicted) | clean runs, flagged attempts, pairs at different loads | misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        m, w = line["mean_vs_fifo"], line["max_wait_vs_fifo"]
        u = line["mean_vs_fifo_unchecked"]
        ratio = "-" if m["median"] is None else f"{m['median']:.3f}x ({m['min']:.3f}-{m['max']:.3f})"
        unchecked = "-" if u["median"] is None else f"{u['median']:.3f}x ({u['min']:.3f}-{u['max']:.3f})"
        out.append(
            f"| {line['workload']} | {line['policy']} | {line['measured_load']} | {ratio} "
            f"| {'-' if m['spread'] is None else m['spread']} "
            f"| {w['median']} "
            f"| {line.get('sim_mean_vs_fifo')} | {unchecked} "
            f"| {line.get('live_vs_sim')} ({line.get('live_vs_predicted')}) "
            f"| {line['clean']}/{line['runs']}, "
            f"{line['flagged']} flagged, {line['load_mismatched']} at different loads "
            f"| {'; '.join(line['misses']) or '-'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trace",
        default=str(DEFAULT_TRACE_PATH),
        help="CSV with TIMESTAMP, ContextTokens, GeneratedTokens (default: the Azure LLM code trace)",
    )
    parser.add_argument("--requests", type=int, default=1000, help="first N trace rows to replay (default 1000)")
    parser.add_argument("--load", type=float, default=0.85, help="offered load of the one worker (default 0.85)")
    parser.add_argument("--tokens-per-row", type=int, default=8, help="trace tokens per model input row (default 8)")
    parser.add_argument("--max-rows", type=int, default=1024, help="largest request, in rows (default 1024)")
    parser.add_argument("--aging-period-s", type=float, default=None, help="aging beat period (0.25; --suite 0.1)")
    parser.add_argument("--suite", action="store_true", help="every policy, interleaved and repeated, on 5 workloads")
    parser.add_argument("--quick", action="store_true", help="with --suite: 80 requests a workload instead of 200")
    parser.add_argument("--repeats", type=int, default=None, help="with --suite: repeats (default 4)")
    parser.add_argument("--retries", type=int, default=1, help="with --suite: reruns of a starved run (default 1)")
    parser.add_argument("--summarize", metavar="FILE", help="the summary of a saved --suite output, complete or not")
    parser.add_argument("--mean-service-ms", type=float, default=50.0, help="with --suite: mean worker time (50)")
    args = parser.parse_args(argv)
    args.requests_given = any(a.startswith("--requests") for a in (sys.argv[1:] if argv is None else argv))
    if args.summarize:
        args.aging_period_s = args.aging_period_s or 0.1
        summarize_file(Path(args.summarize), args)
        return 0
    if args.suite:
        args.aging_period_s = args.aging_period_s or 0.1
        run_suite(args)
        return 0
    args.aging_period_s = args.aging_period_s or 0.25
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
