"""``python -m bench.generate``: continuous batching off and on, through the live system, at saturation.

A generative model (a GPT-2 with random weights built on the spot, ``--layers`` x ``--width``, nothing
downloaded) is served by one solo worker. For each configuration (``MAAS_GEN_MAX_SEQUENCES`` 1, then
``--sequences``) a fresh fleet takes ``--sequences`` generations of ``--tokens`` tokens submitted at once through
``Client.generate``, and the bench reads every stream to the end. Prints one JSON line per configuration (tokens
per second over the whole drain, time to first token p50 and max) and one line comparing them.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=16, help="generations submitted at once (default 16)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each generates (default 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = tiny_lm.packed(Path(tmp) / "m", Path(tmp) / "m.tar", layers=args.layers, width=args.width)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
