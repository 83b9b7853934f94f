"""``python -m bench.generate``: continuous batching off and on, and the streaming overhead of the gateway, through
the live system.

A generative model (a GPT-2 with random weights built on the spot, ``--layers`` x ``--width``, nothing
downloaded) is served by one solo worker.

- ``batching``: for each configuration (``MAAS_GEN_MAX_SEQUENCES`` 1, then ``--sequences``) a fresh fleet takes
  ``--sequences`` generations of ``--tokens`` tokens submitted at once through ``Client.generate``, and the bench
  reads every stream to the end. One JSON line per configuration (tokens per second over the whole drain, time to
  first token p50 and max) and one line comparing them.
- ``streaming``: a fleet with a gateway (and a signing key, so entries are signed and checked as in production)
  takes ``--sequences`` OpenAI streaming completions at once from the official ``openai`` package, ``--rounds``
  times. Per round the same tokens are timed at both ends from the same start, the moment the worker appended the
  first text: *generated* is their count over the span to the last text the worker appended, *delivered* over the
  span to the last text event a client received. When each piece of text was made is its entry's id on the
  request's Redis Stream (Redis' clock when the worker's step reached it); when it was received is the client's
  ``time.time()``: one host's clock, as fleet and clients run on one machine here. Also the lag of every text event
  (received minus made), p50 and p99. The delivered text must equal the streamed text. Each round also sends the
  same requests through ``Client.generate`` (no HTTP), to show what the worker makes when no gateway and no
  ``openai`` client share the cores with it. One JSON line per round and one with the median ratio and its spread
  (target at least 0.9x).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.fleet import BenchFleet
from harness import tiny_lm

MODEL = "gen"
PROMPTS = ["the quick brown fox", "tokens flow to the caller", "a model as a service", "continuous batching"]


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


def batching(artifact: Path, args: argparse.Namespace) -> None:
    figures: dict[str, dict[str, Any]] = {}
    for name, slots in (("off", 1), ("on", args.sequences)):
        with BenchFleet(
            MAAS_ALLOCATION="false", MAAS_VIRTUAL_DEVICES="1x4GiB", MAAS_GEN_MAX_SEQUENCES=str(slots)
        ) as fleet:
            fleet.register(MODEL, artifact, runtime="causal_lm")
            fleet.worker(0, "bench0@local")
            figures[name] = drain(fleet, args.sequences, args.tokens)
        line = {"bench": "generate", "batching": name, "max_sequences": slots, **figures[name]}
        print(json.dumps({**line, "sequences": args.sequences, "layers": args.layers, "width": args.width}))
    speedup = figures["on"]["tokens_per_s"] / figures["off"]["tokens_per_s"]
    print(json.dumps({"bench": "generate", "speedup_tokens_per_s": round(speedup, 2)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=16, help="generations submitted at once (default 16)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each generates (default 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="streaming rounds, for the median (default 5)")
    parser.add_argument(
        "--part", choices=("all", "batching", "streaming"), default="all", help="which measurement (default all)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = tiny_lm.packed(Path(tmp) / "m", Path(tmp) / "m.tar", layers=args.layers, width=args.width)
        if args.part in ("all", "batching"):
            batching(artifact, args)
        if args.part in ("all", "streaming"):
            streaming(artifact, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
