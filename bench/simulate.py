"""Discrete-event simulation of the fleet's priority scheduling, one JSON line of figures per policy.

Models what the live system does, not an idealised scheduler: ``servers`` workers each pop the
highest-priority message (level 0 first, FIFO within a level, as kombu's Redis transport does) and run it to
completion (prefetch 1, no preemption). A request's level is fixed when it is enqueued, so:

- SJF / aging size a request from an *estimate* of its service time: by default the online estimator of
  ``app.service_time`` fed with the context tokens known at arrival and the service times of finished requests
  (``--oracle`` uses the true service time instead);
- SRTF with ``--chunk-ms`` splits a request into chunks, each enqueued at the level of the work left, so a
  short request overtakes a long one at the next chunk boundary; without it a request is a single chunk sized
  by its estimate (non-preemptive SRPT);
- aging is a beat task every ``--aging-period-ms`` that re-enqueues each waiting request whose level has
  improved, at the tail of the new level (the old message is dropped unread, as the worker's idempotency check
  would drop the stale copy). Each request carries ``backlog_s``, the estimated work queued at its arrival over
  the servers, as the producer would read it from the queue lengths.

The worker's cost per message besides the model's run (``per_message_s``) holds the server but is not part of the
service time the estimator learns from, as live: a worker reports its model's run time. ``latency_s`` is added to
every response, outside the server's time: what a lone request's response shows beyond its model time and the
per-message cost. Measured live it is negative (about -1 to -5 ms against a per-message cost of 4-9 ms), because part
of a message's cost (acknowledgement, events, fetching the next message) comes after its result is stored: it holds
the worker, and so delays the next request, but no longer this one. Both are read off the live worker by
``python -m bench.scheduling --suite``; left at 0 the model is the idealised one of earlier figures.

Run: ``python -m bench.simulate [--trace PATH] [--load 0.85] [--servers N]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.policies import Policy, PolicyParams, RequestFacts, next_promotion_wait_s, parse_policy, priority_for
from app.service_time import ServiceTimeEstimator
from bench.trace import DEFAULT_TRACE_PATH, Request, SizeClass, build_workload, load_trace, quantile

#: Estimator key of the single model a trace replays.
TRACE_KEY = ("trace-model", "virtual")


@dataclass(frozen=True)
class SimConfig:
    """One simulated run; ``chunk_s`` only applies to SRTF and ``aging_period_s`` only to aging."""

    policy: Policy
    params: PolicyParams
    servers: int = 1
    chunk_s: float | None = None
    aging_period_s: float = 1.0
    oracle: bool = False
    request_class: str = "interactive"
    stale_copy_s: float = 0.0  # server time a worker spends taking and dropping a stale copy
    #: (size, service s) the estimator has seen before the first arrival, as a live fleet's has from earlier traffic
    warm_start: tuple[tuple[int, float], ...] = ()
    #: Worker time each message costs beyond the model's run (fetch, decode, result, ack, events). A request's
    #: ``service_s`` is then the model's own run time, which is what a live worker reports to the estimator.
    per_message_s: float = 0.0
    #: Delay on every response outside the worker's busy time (publish, wake-up, result delivery), read off an idle
    #: worker: the response of a lone request less its model time and ``per_message_s``. May be negative.
    latency_s: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one request; ``wait_s`` is the time it was not being served."""

    response_s: float
    wait_s: float
    size_class: SizeClass


@dataclass
class _Job:
    request: Request
    estimate_s: float = 0.0
    backlog_s: float = 0.0  # estimated FIFO wait at arrival: queued estimated work / servers
    done_s: float = 0.0
    level: int = 0
    seq: int = 0  # sequence of its live queue entry; older entries are stale copies


@dataclass
class _Sim:
    """Event loop state. Events at the same instant run completions, then arrivals, then the beat."""

    config: SimConfig
    estimator: ServiceTimeEstimator
    jobs: list[_Job]
    queue: list[tuple[int, int, int]] = field(default_factory=list)  # (level, seq, job index)
    waiting: dict[int, float] = field(default_factory=dict)  # job index -> its estimated work in the queue
    queued_work_s: float = 0.0
    promotions: list[tuple[float, int, int]] = field(default_factory=list)  # (due time, seq, job index)
    running: list[tuple[float, int, float]] = field(default_factory=list)  # (end time, job index, chunk s)
    outcomes: list[Outcome | None] = field(default_factory=list)
    next_seq: int = 0
    promoted: int = 0  # copies sent by aging

    def facts(self, job: _Job, now_s: float) -> RequestFacts:
        return RequestFacts(
            request_class=self.config.request_class,
            estimated_service_s=job.estimate_s,
            remaining_s=max(job.estimate_s - job.done_s, 0.0),
            waited_s=now_s - job.request.arrival_s,
            backlog_s=job.backlog_s,
        )

    def enqueue(self, index: int, now_s: float) -> None:
        job = self.jobs[index]
        facts = self.facts(job, now_s)
        self.next_seq += 1
        job.level, job.seq = priority_for(self.config.policy, facts, self.config.params), self.next_seq
        heapq.heappush(self.queue, (job.level, job.seq, index))
        if index not in self.waiting:
            self.waiting[index] = facts.remaining_s
            self.queued_work_s += facts.remaining_s
        if self.config.policy is Policy.AGING:
            due_s = job.request.arrival_s + next_promotion_wait_s(facts, self.config.params)
            if due_s < math.inf:
                heapq.heappush(self.promotions, (due_s, job.seq, index))

    def arrive(self, index: int, now_s: float) -> None:
        job = self.jobs[index]
        if self.config.oracle:
            job.estimate_s = job.request.service_s
        else:
            job.estimate_s = self.estimator.estimate(TRACE_KEY, job.request.size_tokens)
        job.backlog_s = self.queued_work_s / self.config.servers
        self.enqueue(index, now_s)

    def dispatch(self, now_s: float) -> None:
        while self.queue and len(self.running) < self.config.servers:
            _, seq, index = heapq.heappop(self.queue)
            job = self.jobs[index]
            if seq != job.seq:
                # A stale copy left behind by an aging re-enqueue: the worker still takes it, finds it
                # superseded and drops it, which costs it a message's handling but runs nothing.
                if self.config.stale_copy_s > 0.0:
                    heapq.heappush(self.running, (now_s + self.config.stale_copy_s, -1, 0.0))
                continue
            # max(): the running sum drifts by rounding errors and must not go negative.
            self.queued_work_s = max(self.queued_work_s - self.waiting.pop(index), 0.0)
            left_s = job.request.service_s - job.done_s
            chunk_s = left_s
            if self.config.policy is Policy.SRTF and self.config.chunk_s:
                chunk_s = min(left_s, self.config.chunk_s)
            heapq.heappush(self.running, (now_s + chunk_s + self.config.per_message_s, index, chunk_s))

    def complete(self, now_s: float) -> None:
        _, index, chunk_s = heapq.heappop(self.running)
        if index < 0:
            return  # a stale copy dropped
        job = self.jobs[index]
        job.done_s += chunk_s
        request = job.request
        # Relative tolerance: summing chunks may fall a rounding error short of the service time.
        if job.done_s < request.service_s * (1.0 - 1e-9):
            self.enqueue(index, now_s)
            return
        response_s = now_s - request.arrival_s + self.config.latency_s
        self.outcomes[index] = Outcome(response_s, response_s - request.service_s, request.size_class)
        self.estimator.observe(TRACE_KEY, request.size_tokens, request.service_s)

    def next_beat_s(self) -> float:
        """First beat tick at or after the earliest due promotion (ticks that would promote nothing are skipped)."""
        if not self.promotions:
            return math.inf
        period_s = self.config.aging_period_s
        return math.ceil(self.promotions[0][0] / period_s) * period_s

    def beat(self, now_s: float) -> None:
        due = []
        while self.promotions and self.promotions[0][0] <= now_s:
            _, seq, index = heapq.heappop(self.promotions)
            if seq == self.jobs[index].seq and index in self.waiting:
                due.append(index)
        # In submission order, as a beat scanning the pending set by submission time would re-enqueue them.
        for index in sorted(due):
            self.enqueue(index, now_s)
        self.promoted += len(due)


def simulate(requests: Sequence[Request], config: SimConfig, counts: dict[str, int] | None = None) -> list[Outcome]:
    """Run ``requests`` (sorted by arrival) through ``config``; outcomes in request order.

    ``counts``, when given, receives ``promoted``: how many copies aging sent.
    """
    if config.servers < 1:
        raise ValueError(f"servers must be >= 1, got {config.servers}")
    if config.aging_period_s <= 0.0:
        raise ValueError(f"aging_period_s must be > 0, got {config.aging_period_s}")
    mean_service_s = sum(r.service_s for r in requests) / max(len(requests), 1)
    estimator = ServiceTimeEstimator(default_service_s=mean_service_s)
    for size, service_s in config.warm_start:
        estimator.observe(TRACE_KEY, size, service_s)
    sim = _Sim(config, estimator, [_Job(r) for r in requests], outcomes=[None] * len(requests))
    next_arrival = 0
    while next_arrival < len(requests) or sim.running:
        arrival_s = requests[next_arrival].arrival_s if next_arrival < len(requests) else math.inf
        end_s = sim.running[0][0] if sim.running else math.inf
        beat_s = sim.next_beat_s()
        now_s = min(arrival_s, end_s, beat_s)
        if end_s == now_s:
            sim.complete(now_s)
        elif arrival_s == now_s:
            sim.arrive(next_arrival, now_s)
            next_arrival += 1
        else:
            sim.beat(now_s)
        sim.dispatch(now_s)
    if counts is not None:
        counts["promoted"] = sim.promoted
    return [o for o in sim.outcomes if o is not None]


def _figures(outcomes: Sequence[Outcome]) -> dict[str, float]:
    responses_ms = [o.response_s * 1000.0 for o in outcomes]
    return {
        "n": len(outcomes),
        "mean_ms": round(sum(responses_ms) / len(responses_ms), 3),
        "p50_ms": round(quantile(responses_ms, 0.50), 3),
        "p99_ms": round(quantile(responses_ms, 0.99), 3),
        "max_wait_ms": round(max(o.wait_s for o in outcomes) * 1000.0, 3),
    }


def summarize(config: SimConfig, outcomes: Sequence[Outcome]) -> dict[str, object]:
    """Figures of one run: overall and for the shortest and longest size classes."""
    summary: dict[str, object] = {"policy": config.policy.value, "servers": config.servers}
    summary.update(_figures(outcomes))
    for size_class in (SizeClass.SHORTEST, SizeClass.LONGEST):
        members = [o for o in outcomes if o.size_class is size_class]
        if members:
            summary[size_class.value] = _figures(members)
    return summary


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 3) if reference > 0.0 else None


def add_ratios(summary: dict, fifo: dict) -> dict:
    """Add the ratios the targets are stated in, against the FIFO run of the same workload."""
    summary["mean_vs_fifo"] = _ratio(summary["mean_ms"], fifo["mean_ms"])
    summary["max_wait_vs_fifo"] = _ratio(summary["max_wait_ms"], fifo["max_wait_ms"])
    if "shortest" in summary and "shortest" in fifo:
        summary["shortest_p99_vs_fifo"] = _ratio(summary["shortest"]["p99_ms"], fifo["shortest"]["p99_ms"])
    return summary


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE_PATH), help="CSV: TIMESTAMP, ContextTokens, ...")
    parser.add_argument("--load", type=float, default=0.85, help="offered load per server (default 0.85)")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--mean-service-ms", type=float, default=100.0, help="mean service after scaling")
    parser.add_argument("--policies", default="fifo,sjf,srtf,aging", help="comma-separated; fifo always runs")
    parser.add_argument("--chunk-ms", type=float, default=None, help="SRTF chunk (default: whole requests)")
    parser.add_argument("--aging-period-ms", type=float, default=None, help="beat period (default: the aging step)")
    parser.add_argument("--oracle", action="store_true", help="size requests by true, not estimated, service")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        policies = [parse_policy(name.strip()) for name in args.policies.split(",") if name.strip()]
        requests = build_workload(
            load_trace(args.trace), servers=args.servers, load=args.load, mean_service_ms=args.mean_service_ms
        )
    except (OSError, ValueError) as exc:
        print(f"bench.simulate: {exc}", file=sys.stderr)
        return 2
    # The bands and the aging clock follow the workload's typical service time, as a deployment would set
    # them from its estimator's fleet mean; nothing here is fitted to the trace.
    params = PolicyParams.around(args.mean_service_ms / 1000.0)
    period_s = params.aging_step_s if args.aging_period_ms is None else args.aging_period_ms / 1000.0
    chunk_s = None if args.chunk_ms is None else args.chunk_ms / 1000.0
    fifo_summary = None
    for policy in [Policy.FIFO, *(p for p in policies if p is not Policy.FIFO)]:
        config = SimConfig(policy, params, args.servers, chunk_s, period_s, args.oracle)
        summary = summarize(config, simulate(requests, config))
        summary.update(load=args.load, mean_service_ms=args.mean_service_ms)
        fifo_summary = fifo_summary or summary
        print(json.dumps(add_ratios(summary, fifo_summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
