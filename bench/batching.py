"""``python -m bench.batching``: dynamic batching off and on, through the live system, side by side.

One solo worker serves an ONNX wide MLP whose single-request run takes about 10 ms here (3072-wide, 6 layers).
For each configuration (max_batch_size 1, then ``--batch``): the saturation throughput (a backlog of
``--backlog`` requests drained by a freshly loaded replica), then the latency of Poisson arrivals at one and the
same offered rate for both (``--load`` x the unbatched saturation throughput). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from celery.result import AsyncResult

from app import registry
from app.db.session import session_scope
from bench.fleet import BenchFleet
from bench.models import wide_mlp
from bench.trace import quantile

MODEL = "wide"


def model_ms(path: Path) -> tuple[float, float]:
    """In-process run time of one row, and per row in a batch of 32, on one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options)
    times = {}
    for rows in (1, 32):
        x = np.zeros((rows, 16), dtype=np.float32)
        session.run(None, {"x": x})
        t0 = time.perf_counter()
        for _ in range(10):
            session.run(None, {"x": x})
        times[rows] = (time.perf_counter() - t0) / 10 * 1000
    return times[1], times[32] / 32


def configure(fleet: BenchFleet, batch: int, delay_ms: float) -> None:
    client = fleet.client
    for handle in client.stop(MODEL):
        handle.wait()
    with session_scope(fleet.settings.sqlalchemy_url) as session:
        registry.configure(session, MODEL, max_batch_size=batch, max_queue_delay_ms=delay_ms)


def saturation(fleet: BenchFleet, backlog: int) -> float:
    """Requests per second while a freshly loaded replica drains a backlog."""
    client = fleet.client
    x = np.ones((1, 16), dtype=np.float32)
    handles = [client.infer(MODEL, {"x": x}) for _ in range(backlog)]
    client.load(MODEL).wait()
    for h in handles:
        h.wait(timeout_s=600)
    done = sorted(AsyncResult(h.id, app=client.app).date_done.timestamp() for h in handles)
    return (len(done) - 1) / (done[-1] - done[0])


def latency(fleet: BenchFleet, rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Response times (ms) of Poisson arrivals at ``rate_per_s``."""
    client = fleet.client
    rng = np.random.default_rng(seed)
    x = np.ones((1, 16), dtype=np.float32)
    sent, start = [], time.time()
    next_at = start
    while next_at - start < duration_s:
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
        sent.append((time.time(), client.infer(MODEL, {"x": x})))
        next_at += rng.exponential(1.0 / rate_per_s)
    out = []
    for t0, h in sent:
        h.wait(timeout_s=600)
        out.append((AsyncResult(h.id, app=client.app).date_done.timestamp() - t0) * 1000)
    return out


def run(args: argparse.Namespace) -> dict:
    with (
        BenchFleet(MAAS_ALLOCATION="false", MAAS_VIRTUAL_DEVICES="1x4GiB") as fleet,
        tempfile.TemporaryDirectory() as tmp,
    ):
        path = wide_mlp(Path(tmp) / "wide.onnx", hidden=3072, layers=6)
        single_ms, per_row_ms = model_ms(path)
        fleet.register(MODEL, path, mem_bytes=1024**3)
        fleet.worker(0, "bench0@local")
        figures = {}
        for name, batch, delay in (("off", 1, 0.0), ("on", args.batch, args.delay_ms)):
            configure(fleet, batch, delay)
            figures[f"per_s_{name}"] = saturation(fleet, args.backlog)
        rate = args.load * figures["per_s_off"]
        for name, batch, delay in (("off", 1, 0.0), ("on", args.batch, args.delay_ms)):
            configure(fleet, batch, delay)
            fleet.client.load(MODEL).wait()
            ms = latency(fleet, rate, args.duration_s, seed=1)
            figures[f"p50_ms_{name}"] = statistics.median(ms)
            figures[f"p99_ms_{name}"] = quantile(ms, 0.99)
    return {
        "bench": "batching",
        "max_batch_size": args.batch,
        "max_queue_delay_ms": args.delay_ms,
        "model_ms_single": round(single_ms, 3),
        "model_ms_per_row": round(per_row_ms, 3),
        **{k: round(v, 2) for k, v in figures.items()},
        "throughput_ratio": round(figures["per_s_on"] / figures["per_s_off"], 2),
        "offered_per_s": round(rate, 2),
        "p99_ratio": round(figures["p99_ms_on"] / figures["p99_ms_off"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="max_batch_size when batching is on (default 32)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="max_queue_delay_ms when on (default 2)")
    parser.add_argument("--backlog", type=int, default=600, help="requests drained to measure saturation")
    parser.add_argument("--load", type=float, default=0.7, help="offered rate as a share of unbatched saturation")
    parser.add_argument("--duration-s", type=float, default=15.0, help="seconds of Poisson arrivals per config")
    print(json.dumps(run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
