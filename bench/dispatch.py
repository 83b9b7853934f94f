"""``python -m bench.dispatch``: the cost of the fleet's infer path against a bare Celery task.

Both go through the same Redis, the same model queue and the same solo worker, in the same run, interleaved in
blocks so machine noise hits both alike. The infer path adds what the product adds: client-side signature
validation and tensor encoding, worker-side validation, decoding and an ONNX Runtime call of a trivial model.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.broker.layout import model_queue
from app.signature import encode_tensor
from bench.fleet import BenchFleet
from bench.models import add_one


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run(rounds: int, block: int, burst: int, signed: bool = True) -> dict:
    # A fleet key signs control orders and every stored result (app.signing); --unsigned measures without one.
    env = {"MAAS_SIGNING_KEY": secrets.token_hex(32)} if signed else {}
    with BenchFleet(**env) as fleet, tempfile.TemporaryDirectory() as tmp:
        fleet.register("trivial", add_one(Path(tmp) / "trivial.onnx"))
        fleet.worker(0, "bench0@local")
        client, app = fleet.client, fleet.client.app
        client.load("trivial").wait()
        x = np.ones((1, 4), dtype=np.float32)
        payload = [encode_tensor("x", x)]
        queue = model_queue("trivial")

        def infer_once() -> None:
            client.infer("trivial", {"x": x}).wait()

        def bare_once() -> None:
            app.send_task("maas.ping", args=[payload], queue=queue).get(timeout=30)

        for _ in range(50):  # warm-up: connections, ONNX Runtime's first run, result subscriptions
            infer_once()
            bare_once()
        lat = {"infer": [], "bare": []}
        for _ in range(rounds):
            for name, fn in (("infer", infer_once), ("bare", bare_once)):
                for _ in range(block):
                    t0 = time.perf_counter()
                    fn()
                    lat[name].append((time.perf_counter() - t0) * 1000)

        rates = {"infer": [], "bare": []}
        for _ in range(3):
            t0 = time.perf_counter()
            handles = [client.infer("trivial", {"x": x}) for _ in range(burst)]
            for h in handles:
                h.wait(timeout_s=120)
            rates["infer"].append(burst / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            results = [app.send_task("maas.ping", args=[payload], queue=queue) for _ in range(burst)]
            for r in results:
                r.get(timeout=120)
            rates["bare"].append(burst / (time.perf_counter() - t0))

    p50, bare_p50 = statistics.median(lat["infer"]), statistics.median(lat["bare"])
    per_s, bare_per_s = statistics.median(rates["infer"]), statistics.median(rates["bare"])
    return {
        "bench": "dispatch",
        "requests_latency": len(lat["infer"]),
        "burst": burst,
        "p50_ms": round(p50, 3),
        "p99_ms": round(percentile(lat["infer"], 99), 3),
        "per_s": round(per_s, 1),
        "bare_p50_ms": round(bare_p50, 3),
        "bare_p99_ms": round(percentile(lat["bare"], 99), 3),
        "bare_per_s": round(bare_per_s, 1),
        "p50_ratio": round(p50 / bare_p50, 3),
        "per_s_ratio": round(per_s / bare_per_s, 3),
        "pool": "solo",
        "signed_results": signed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (default 10)")
    parser.add_argument("--block", type=int, default=50, help="sequential requests per path per round (default 50)")
    parser.add_argument("--burst", type=int, default=1000, help="requests in flight for throughput (default 1000)")
    parser.add_argument("--unsigned", action="store_true", help="no MAAS_SIGNING_KEY: results stored unsigned")
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.block, args.burst, signed=not args.unsigned)))


if __name__ == "__main__":
    main()
