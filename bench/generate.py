"""``python -m bench.generate``: continuous batching off and on, and the scheduling policies by tokens, through the
live system, and the streaming overhead of the gateway, side by side in one run (JSON lines).

A generative model (a GPT-2 with random weights built on the spot, ``--layers`` x ``--width``, nothing
downloaded) is served by one solo worker. Four parts, each in fresh fleets:

1. **Batching off vs on at saturation.** Two fleets side by side, ``MAAS_GEN_MAX_SEQUENCES`` 1 and
   ``--sequences``; each round, each worker takes ``--sequences`` generations of ``--tokens`` tokens submitted at
   once and the bench reads every stream to the end (tokens per second over the whole drain, time to first token
   p50 and max). ``--batching-rounds`` rounds, the order alternating; the speedup is the median of the rounds'
   on / off ratios, with their min and max.
2. **Batching off vs on at the same offered load.** The Azure LLM code trace's requests (below) replayed at
   ``--ttft-load`` of what batching *off* sustains (the drain above), through each configuration: p99 time to
   first token, p99 completion.
3. **FIFO vs SRTF by remaining tokens vs aging**, one worker with ``--policy-sequences`` slots: the trace's
   requests replayed at ``--load`` of its measured capacity, the model's policy switched between runs, policies
   interleaved (the order rotates each round) and repeated ``--repeats`` times; per policy and size class the mean
   and p99 completion and time to first token, the worst wait (completion less the request's own run time alone),
   then the median over rounds and its spread (min-max) of SRTF's mean completion and aging's worst wait against
   the same round's FIFO.

The trace (``bench.trace``) gives arrival times, prompt and output lengths. Scaled to the tiny model: prompts are
``ContextTokens / --prompt-divisor`` words, outputs ``GeneratedTokens`` capped at ``--max-output`` (the model
writes no end-of-text, so each request makes exactly its ``max_tokens``); arrivals keep their order and gaps,
compressed so the offered tokens per second are the target load. A request's size class is by its output tokens
(shortest: the lowest tenth, longest: the highest tenth).

The **engine** part is part 1 without the fleet: the same drains through ``workers.generation.Engine`` in this
process, off and on in alternating ``--batching-rounds`` rounds (the engine's own gain, no Redis or worker).

4. **Streaming overhead**: a fleet with a gateway (and a signing key, so entries are signed and checked as in
   production) takes ``--sequences`` OpenAI streaming completions at once from the official ``openai`` package,
   ``--rounds`` times. Per round the same tokens are timed at both ends from the same start, the moment the worker
   appended the first text: *generated* is their count over the span to the last text the worker appended,
   *delivered* over the span to the last text event a client received. When each piece of text was made is its
   entry's id on the request's Redis Stream (Redis' clock when the worker's step reached it); when it was received
   is the client's ``time.time()``: one host's clock, as fleet and clients run on one machine here. Also the lag of
   every text event (received minus made), p50 and p99. The delivered text must equal the streamed text. Each round
   also sends the same requests through ``Client.generate`` (no HTTP), to show what the worker makes when no
   gateway and no ``openai`` client share the cores with it. One JSON line per round and one with the median ratio
   and its spread (target at least 0.9x).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet import BenchFleet
from bench.trace import DEFAULT_TRACE_PATH, SizeClass, TraceRow, load_trace, quantile
from harness import tiny_lm

MODEL = "gen"
PROMPTS = ["the quick brown fox", "tokens flow to the caller", "a model as a service", "continuous batching"]
WORDS = " ".join(tiny_lm.CORPUS).split()
POLICIES = ("fifo", "srtf", "aging")
#: Targets of issue 14: SRTF's mean completion against FIFO's, aging's worst wait against FIFO's.
SRTF_MEAN_TARGET = 0.6
AGING_WORST_TARGET = 2.0


@dataclass(frozen=True)
class GenRequest:
    """One replayed request: when it is sent, its prompt, how many tokens it makes, its size class."""

    arrival_s: float
    prompt: str
    max_tokens: int
    size_class: SizeClass


def workload(rows: list[TraceRow], count: int, offset: int, prompt_divisor: int, max_output: int) -> list[GenRequest]:
    """``count`` consecutive trace requests from ``offset``, scaled to the tiny model, arrivals as in the trace
    (compress them with :func:`at_load`)."""
    picked = rows[offset : offset + count]
    if len(picked) < 2:
        raise ValueError(f"the trace has {len(rows)} requests; cannot take {count} from {offset}")
    outputs = [max(1, min(r.generated_tokens, max_output)) for r in picked]
    low, high = quantile(outputs, 0.1), quantile(outputs, 0.9)

    def size_class(n: int) -> SizeClass:
        if n <= low:
            return SizeClass.SHORTEST
        return SizeClass.LONGEST if n >= high else SizeClass.MIDDLE

    start = picked[0].arrival_s
    return [
        GenRequest(
            r.arrival_s - start,
            " ".join(WORDS[(i + k) % len(WORDS)] for k in range(max(1, r.context_tokens // prompt_divisor))),
            n,
            size_class(n),
        )
        for i, (r, n) in enumerate(zip(picked, outputs, strict=True))
    ]


def at_load(requests: list[GenRequest], tokens_per_s: float, load: float) -> list[GenRequest]:
    """The same requests with arrivals compressed (or stretched) so they offer ``load`` x ``tokens_per_s``."""
    span_s = requests[-1].arrival_s - requests[0].arrival_s
    offered = sum(r.max_tokens for r in requests) / span_s
    scale = offered / (load * tokens_per_s)
    return [GenRequest(r.arrival_s * scale, r.prompt, r.max_tokens, r.size_class) for r in requests]


def drain(fleet: BenchFleet, sequences: int, tokens: int) -> dict[str, Any]:
    from app.client import Client

    client = Client(fleet.settings)
    client.load(MODEL).wait(timeout_s=300)
    client.generate(MODEL, "warm up", max_tokens=4).result()
    firsts: list[float] = [0.0] * sequences
    made: list[int] = [0] * sequences
    started = time.perf_counter()
    gens = [
        client.generate(MODEL, PROMPTS[i % len(PROMPTS)], max_tokens=tokens, timeout_s=600) for i in range(sequences)
    ]

    def read(i: int) -> None:
        for n, _ in enumerate(gens[i]):
            if n == 0:
                firsts[i] = time.perf_counter() - started
        made[i] = gens[i].usage.get("completion_tokens", 0)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(sequences)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "tokens": sum(made),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(sum(made) / wall, 1),
        "ttft_p50_s": round(statistics.median(firsts), 3),
        "ttft_max_s": round(max(firsts), 3),
    }


def cpu_s(fleet: BenchFleet) -> dict[str, float]:
    """CPU seconds used so far by the worker, the gateway and this process (the ``openai`` clients)."""
    import psutil

    used = {"this": time.process_time()}
    for proc in fleet.procs:
        times = psutil.Process(proc.popen.pid).cpu_times()
        used[proc.name] = times.user + times.system
    return used


def stream_round(url: str, api_key: str, fleet: BenchFleet, sequences: int, tokens: int) -> dict[str, Any]:
    """``sequences`` OpenAI streaming completions at once; tokens per second generated vs delivered, and where the
    machine's CPU went (this machine has two cores for worker, gateway and clients together)."""
    import openai

    api = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=600)
    received: list[list[float]] = [[] for _ in range(sequences)]  # wall clock at each non-empty text event
    texts, task_ids = [""] * sequences, [""] * sequences

    def read(i: int) -> None:
        stream = api.completions.create(
            model=MODEL, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=tokens, temperature=0, stream=True
        )
        pieces = []
        for event in stream:
            task_ids[i] = event.id.removeprefix("cmpl-")
            if event.choices[0].text:
                received[i].append(time.time())
                pieces.append(event.choices[0].text)
        texts[i] = "".join(pieces)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(sequences)]
    cpu_before = cpu_s(fleet)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = {name: used - cpu_before[name] for name, used in cpu_s(fleet).items()}

    made, generated_tokens, streamed = worker_side(fleet, task_ids)
    same_text = streamed == texts
    start = min(t[0] for t in made)
    generated_s, delivered_s = max(t[-1] for t in made) - start, max(r[-1] for r in received) - start
    # Each text entry became one event (the gateway sends what each entry adds), so they pair up in order.
    lags = sorted(r - m for rs, ms in zip(received, made, strict=True) for r, m in zip(rs, ms, strict=True))
    generated, delivered = generated_tokens / generated_s, generated_tokens / delivered_s
    return {
        "tokens": generated_tokens,
        "generated_tokens_per_s": round(generated, 1),
        "delivered_tokens_per_s": round(delivered, 1),
        "delivered_over_generated": round(delivered / generated, 3),
        "event_lag_p50_ms": round(1000 * lags[len(lags) // 2], 1),
        "event_lag_p99_ms": round(1000 * lags[int(len(lags) * 0.99)], 1),
        "delivered_text_equals_streamed": same_text,
        "cpu_ms_per_token": {
            "worker": round(1000 * cpu["bench0@local"] / generated_tokens, 2),
            "gateway": round(1000 * cpu["gateway"] / generated_tokens, 2),
            "openai_clients": round(1000 * cpu["this"] / generated_tokens, 2),
        },
        "events_received": sum(len(r) for r in received),
        "text_entries": sum(len(m) for m in made),
    }


def worker_side(fleet: BenchFleet, task_ids: list[str]) -> tuple[list[list[float]], int, list[str]]:
    """Per request, Redis' clock (s) when the worker appended each text entry; the tokens made; the texts."""
    from app.broker import keys, streams

    made, tokens, texts = [], 0, []
    for task_id in task_ids:
        reader, times = streams.Reader(task_id, fleet.settings.signing_key), []
        for entry_id, fields in fleet.client.redis.xrange(keys.generation_stream(task_id)):
            if reader.feed(streams.decode(fields)):
                times.append(int(entry_id.decode().split("-")[0]) / 1000)
        made.append(times)
        tokens += reader.usage.get("completion_tokens", 0)
        texts.append(reader.text)
    return made, tokens, texts


def python_client_round(fleet: BenchFleet, sequences: int, tokens: int) -> float:
    """The worker's tokens per second for the same requests read by ``Client.generate`` instead of HTTP clients:
    what the worker makes when no gateway and no ``openai`` client share the machine's cores with it."""
    gens = [fleet.client.generate(MODEL, PROMPTS[i % len(PROMPTS)], max_tokens=tokens) for i in range(sequences)]
    threads = [threading.Thread(target=g.result) for g in gens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made, made_tokens, _ = worker_side(fleet, [g.id for g in gens])
    return made_tokens / (max(t[-1] for t in made) - min(t[0] for t in made))


def streaming(artifact: Path, args: argparse.Namespace) -> None:
    api_key = secrets.token_hex(16)
    env = {"MAAS_SIGNING_KEY": secrets.token_hex(32), "MAAS_GEN_MAX_SEQUENCES": str(args.sequences)}
    with BenchFleet(MAAS_ALLOCATION="false", MAAS_VIRTUAL_DEVICES="1x4GiB", **env) as fleet:
        fleet.register(MODEL, artifact, runtime="causal_lm")
        fleet.worker(0, "bench0@local")
        url = fleet.gateway(MAAS_API_KEYS=api_key)
        fleet.client.load(MODEL).wait(timeout_s=300)
        stream_round(url, api_key, fleet, 1, 4)  # warm up: connections, the first prefill
        ratios, alone = [], []
        for n in range(args.rounds):
            figures = stream_round(url, api_key, fleet, args.sequences, args.tokens)
            ratios.append(figures["delivered_over_generated"])
            alone.append(round(python_client_round(fleet, args.sequences, args.tokens), 1))
            figures["generated_tokens_per_s_read_by_python_client"] = alone[-1]
            print(json.dumps({"bench": "generate", "streaming": "openai", "round": n + 1, **figures}))
    print(
        json.dumps(
            {
                "bench": "generate",
                "streaming": "summary",
                "rounds": args.rounds,
                "sequences": args.sequences,
                "tokens": args.tokens,
                "delivered_over_generated_median": round(statistics.median(ratios), 3),
                "delivered_over_generated_min": min(ratios),
                "delivered_over_generated_max": max(ratios),
                "generated_tokens_per_s_read_by_python_client_median": statistics.median(alone),
                "target": 0.9,
            }
        )
    )


def replay(fleet: BenchFleet, requests: list[GenRequest]) -> list[dict[str, Any]]:
    """Send each request at its arrival time and read its stream to the end; per request: completion and time to
    first token (from its submission, as its caller sees them), tokens made and size class."""
    from app.client import Client

    client = Client(fleet.settings)
    out: list[dict[str, Any]] = [{} for _ in requests]
    threads = []

    def read(i: int, generation: Any, sent: float) -> None:
        first = None
        for _ in generation:
            if first is None:
                first = time.perf_counter() - sent
        done = time.perf_counter() - sent
        out[i] = {
            "completion_s": done,
            "ttft_s": first if first is not None else done,
            "tokens": generation.usage.get("completion_tokens", 0),
            "class": requests[i].size_class.value,
        }

    start = time.perf_counter()
    for i, r in enumerate(requests):
        delay = start + r.arrival_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the arrivals, not waiting for a result
        sent = time.perf_counter()
        generation = client.generate(MODEL, r.prompt, max_tokens=r.max_tokens, timeout_s=600)
        thread = threading.Thread(target=read, args=(i, generation, sent))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return out


def solo_times(fleet: BenchFleet) -> tuple[float, float]:
    """(time to first token, inter-token time) of one request alone, the median of three: a request's own run
    time alone, which its wait is measured against."""
    from app.client import Client

    client = Client(fleet.settings)
    firsts, gaps = [], []
    for _ in range(3):
        sent = time.perf_counter()
        generation = client.generate(MODEL, PROMPTS[0], max_tokens=64, timeout_s=120)
        first = None
        for _ in generation:
            first = first if first is not None else time.perf_counter() - sent
        total = time.perf_counter() - sent
        firsts.append(first or total)
        gaps.append((total - (first or total)) / 63)
    return statistics.median(firsts), statistics.median(gaps)


def figures(results: list[dict[str, Any]], solo: tuple[float, float]) -> dict[str, Any]:
    """Mean and p99 completion and time to first token per size class (and all), and the worst wait."""
    first_s, gap_s = solo
    out: dict[str, Any] = {}
    for name in ["all", *[c.value for c in SizeClass]]:
        picked = [r for r in results if name == "all" or r["class"] == name]
        if not picked:
            continue
        done, firsts = [r["completion_s"] for r in picked], [r["ttft_s"] for r in picked]
        out[name] = {
            "n": len(picked),
            "mean_s": round(statistics.fmean(done), 4),
            "p99_s": round(quantile(done, 0.99), 4),
            "ttft_mean_s": round(statistics.fmean(firsts), 4),
            "ttft_p99_s": round(quantile(firsts, 0.99), 4),
        }
    waits = [r["completion_s"] - (first_s + (r["tokens"] - 1) * gap_s) for r in results]
    out["worst_wait_s"] = round(max(waits), 4)
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def batching(args: argparse.Namespace, artifact: Path, requests: list[GenRequest]) -> None:
    """Parts 1 and 2: throughput at saturation, then p99 TTFT at one offered load, batching off then on.

    Both fleets run side by side (idle while the other drains); each round drains both, the order alternating, so
    a slow spell of the machine falls on both configurations rather than on one."""
    configs = (("off", 1), ("on", args.sequences))
    with contextlib.ExitStack() as stack:
        fleets: dict[str, BenchFleet] = {}
        for name, slots in configs:
            fleet = stack.enter_context(
                BenchFleet(MAAS_ALLOCATION="false", MAAS_VIRTUAL_DEVICES="1x4GiB", MAAS_GEN_MAX_SEQUENCES=str(slots))
            )
            fleet.register(MODEL, artifact, runtime="causal_lm")
            fleet.worker(0, "bench0@local")
            fleets[name] = fleet
        rates: dict[str, list[float]] = {name: [] for name, _ in configs}
        for round_no in range(args.batching_rounds):
            order = configs if round_no % 2 == 0 else configs[::-1]
            for name, slots in order:
                figures = drain(fleets[name], args.sequences, args.tokens)
                rates[name].append(figures["tokens_per_s"])
                line = {"bench": "generate", "batching": name, "round": round_no, "max_sequences": slots, **figures}
                print(json.dumps({**line, "sequences": args.sequences, "layers": args.layers, "width": args.width}))
        ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
        # The same offered load for both: a share of what batching off sustains.
        load_rate = statistics.median(rates["off"])
        paced = at_load(requests[: args.ttft_requests], load_rate, args.ttft_load)
        for name, _ in configs:
            results = replay(fleets[name], paced)
            done, firsts = [r["completion_s"] for r in results], [r["ttft_s"] for r in results]
            print(
                json.dumps(
                    {
                        "bench": "generate",
                        "part": "ttft_at_load",
                        "batching": name,
                        "offered_tokens_per_s": round(args.ttft_load * load_rate, 1),
                        "requests": len(results),
                        "ttft_p50_s": round(statistics.median(firsts), 3),
                        "ttft_p99_s": round(quantile(firsts, 0.99), 3),
                        "completion_p99_s": round(quantile(done, 0.99), 3),
                    }
                )
            )
    print(
        json.dumps(
            {
                "bench": "generate",
                "speedup_tokens_per_s": spread(ratios),
                "tokens_per_s_off": spread(rates["off"]),
                "tokens_per_s_on": spread(rates["on"]),
                "rounds": len(ratios),
            }
        )
    )


def engine_only(args: argparse.Namespace, artifact: Path) -> None:
    """Part 1 without the fleet: the same drain through the engine in this process (no Redis, no worker), batching
    off and on in alternating rounds, to tell the engine's own gain from what serving around it costs."""
    from app.generation import SamplingParams
    from workers.runtimes import create

    runtime = create("causal_lm")
    runtime.load(artifact, use_gpu=False)
    try:
        rates: dict[str, list[float]] = {"off": [], "on": []}
        configs = (("off", 1), ("on", args.sequences))
        for round_no in range(args.batching_rounds):
            for name, slots in configs if round_no % 2 == 0 else configs[::-1]:
                engine = runtime.engine(max_sequences=slots)
                for i in range(args.sequences):
                    engine.add(str(i), PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=args.tokens))
                started = time.perf_counter()
                while engine.busy:
                    engine.step()
                rate = args.sequences * args.tokens / (time.perf_counter() - started)
                rates[name].append(rate)
                print(
                    json.dumps({"bench": "generate", "engine": name, "round": round_no, "tokens_per_s": round(rate, 1)})
                )
    finally:
        runtime.unload()
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    print(json.dumps({"bench": "generate", "engine_speedup_tokens_per_s": spread(ratios), "rounds": len(ratios)}))


def policy_comparison(args: argparse.Namespace, artifact: Path, requests: list[GenRequest]) -> None:
    """Part 3: FIFO, SRTF and aging through one worker, interleaved and repeated."""
    from app import registry
    from app.db.session import session_scope

    env = {"MAAS_ALLOCATION": "false", "MAAS_VIRTUAL_DEVICES": "1x4GiB"}
    with BenchFleet(**env, MAAS_GEN_MAX_SEQUENCES=str(args.policy_sequences)) as fleet:
        fleet.register(MODEL, artifact, runtime="causal_lm", service_ms=5.0)
        fleet.worker(0, "bench0@local")
        capacity = drain(fleet, 4 * args.policy_sequences, args.tokens)["tokens_per_s"]
        solo = solo_times(fleet)
        paced = at_load(requests, capacity, args.load)
        rounds: list[dict[str, dict[str, Any]]] = []
        for round_no in range(args.repeats):
            order = POLICIES[round_no % 3 :] + POLICIES[: round_no % 3]
            found: dict[str, dict[str, Any]] = {}
            for policy in order:
                with session_scope(fleet.settings.sqlalchemy_url) as session:
                    registry.configure(session, MODEL, policy=policy)
                fleet.client.scheduler.invalidate(MODEL)
                time.sleep(0.1)  # no request in flight: the previous replay read every stream to its end
                found[policy] = figures(replay(fleet, paced), solo)
                line = {"bench": "generate", "part": "policies", "round": round_no, "policy": policy}
                print(json.dumps({**line, **found[policy]}))
            rounds.append(found)
        summary: dict[str, Any] = {
            "bench": "generate",
            "part": "policies_summary",
            "rounds": args.repeats,
            "requests": len(paced),
            "load": args.load,
            "capacity_tokens_per_s": capacity,
            "max_sequences": args.policy_sequences,
        }
        for policy in POLICIES:
            per: dict[str, Any] = {}
            for name in ["all", *[c.value for c in SizeClass]]:
                if all(name in r[policy] for r in rounds):
                    per[name] = {
                        k: spread([r[policy][name][k] for r in rounds]) for k in rounds[0][policy][name] if k != "n"
                    }
            per["worst_wait_s"] = spread([r[policy]["worst_wait_s"] for r in rounds])
            summary[policy] = per
        srtf_mean = [r["srtf"]["all"]["mean_s"] / r["fifo"]["all"]["mean_s"] for r in rounds]
        aging_worst = [r["aging"]["worst_wait_s"] / max(r["fifo"]["worst_wait_s"], 1e-9) for r in rounds]
        summary["srtf_mean_vs_fifo"] = {**spread(srtf_mean), "target": SRTF_MEAN_TARGET}
        summary["srtf_mean_met"] = statistics.median(srtf_mean) <= SRTF_MEAN_TARGET
        summary["aging_worst_wait_vs_fifo"] = {**spread(aging_worst), "target": AGING_WORST_TARGET}
        summary["aging_worst_wait_met"] = statistics.median(aging_worst) <= AGING_WORST_TARGET
        aging_mean = [r["aging"]["all"]["mean_s"] / r["fifo"]["all"]["mean_s"] for r in rounds]
        summary["aging_mean_vs_fifo"] = spread(aging_mean)
        print(json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=16, help="generations submitted at once (default 16)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each generates in the drain (default 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE_PATH)
    parser.add_argument("--offset", type=int, default=2000, help="first trace request replayed (default 2000)")
    parser.add_argument("--requests", type=int, default=120, help="trace requests per policy run (default 120)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three policies (default 3)")
    parser.add_argument("--load", type=float, default=0.9, help="offered load for the policies (default 0.9)")
    parser.add_argument("--policy-sequences", type=int, default=4, help="the policy worker's slots (default 4)")
    parser.add_argument("--ttft-requests", type=int, default=60, help="requests of the TTFT-at-load replay")
    parser.add_argument("--ttft-load", type=float, default=0.7, help="share of batching-off's capacity offered")
    parser.add_argument("--prompt-divisor", type=int, default=128, help="trace context tokens per prompt word")
    parser.add_argument("--max-output", type=int, default=256, help="cap on a request's output tokens")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run, ~2 min)")
    parser.add_argument("--rounds", type=int, default=5, help="streaming rounds, for the median (default 5)")
    parser.add_argument(
        "--batching-rounds", type=int, default=5, help="drains of each configuration, for the median (default 5)"
    )
    parser.add_argument(
        "--part",
        choices=("all", "engine", "batching", "policies", "streaming"),
        default="all",
        help="which measurement (default all)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeats, args.ttft_requests, args.sequences, args.rounds = 80, 2, 30, 8, 3
        args.batching_rounds = 2
    rows = load_trace(args.trace)
    requests = workload(rows, max(args.requests, args.ttft_requests), args.offset, args.prompt_divisor, args.max_output)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = tiny_lm.packed(
            Path(tmp) / "m", Path(tmp) / "m.tar", layers=args.layers, width=args.width, context=1024
        )
        if args.part in ("all", "engine"):
            engine_only(args, artifact)
        if args.part in ("all", "batching"):
            batching(args, artifact, requests)
        if args.part in ("all", "policies"):
            policy_comparison(args, artifact, requests[: args.requests])
        if args.part in ("all", "streaming"):
            streaming(artifact, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
