"""``python -m bench.http``: the HTTP gateway against the Python client on the same fleet, side by side.

One fleet (Redis, one solo worker on a virtual device, a trivial ONNX model), one ``maas serve`` process, and four
cases, each printed as one JSON line:

- ``latency``: one small request at a time, HTTP (a keep-alive connection) and the Python client interleaved in
  blocks so machine noise hits both alike; p50 / p99 and their ratio (target: HTTP p50 at most 1.25x).
- ``throughput``: 256 concurrent HTTP clients against the Python client's best (a burst of handles in flight);
  requests per second and their ratio (target at least 0.9x).
- ``in_flight``: 2,000 requests at once through the one gateway process, each on its own connection: all
  answered, no error, the gateway's RSS growth (target under 200 MB).
- ``large``: a 16 x 2048 FP32 request end to end, the binary tensor extension against JSON ``data``.

The load generator is a minimal asyncio HTTP/1.1 client (no dependency), run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil

from bench.fleet import BenchFleet
from bench.models import add_one, mlp

SMALL = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}


class Connection:
    """One keep-alive HTTP/1.1 connection: requests one after another, bodies by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=2**24)
        return cls(reader, writer, parts.netloc)

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(url: str, client: Any, rounds: int, block: int) -> dict[str, Any]:
    body = json.dumps(SMALL).encode()
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)

    async def http_block(conn: Connection, out: list[float]) -> None:
        for _ in range(block):
            t0 = time.perf_counter()
            status, _ = await conn.post("/v2/models/trivial/infer", body)
            out.append((time.perf_counter() - t0) * 1000)
            assert status == 200, status

    async def go() -> dict[str, list[float]]:
        conn = await Connection.open(url)
        lat: dict[str, list[float]] = {"http": [], "client": []}
        for _ in range(30):  # warm-up
            await conn.post("/v2/models/trivial/infer", body)
            client.infer("trivial", {"x": x}).wait()
        for _ in range(rounds):
            await http_block(conn, lat["http"])
            for _ in range(block):
                t0 = time.perf_counter()
                client.infer("trivial", {"x": x}).wait()
                lat["client"].append((time.perf_counter() - t0) * 1000)
        await conn.close()
        return lat

    lat = asyncio.run(go())
    http_p50, client_p50 = statistics.median(lat["http"]), statistics.median(lat["client"])
    return {
        "bench": "http",
        "case": "latency",
        "requests": len(lat["http"]),
        "http_p50_ms": round(http_p50, 3),
        "http_p99_ms": round(_pct(lat["http"], 99), 3),
        "client_p50_ms": round(client_p50, 3),
        "client_p99_ms": round(_pct(lat["client"], 99), 3),
        "p50_ratio": round(http_p50 / client_p50, 3),
    }


async def _concurrent(url: str, connections: int, per_connection: int, path: str, body: bytes) -> tuple[float, int]:
    """``connections`` clients each sending ``per_connection`` requests back to back; (seconds, errors)."""
    conns = await asyncio.gather(*(Connection.open(url) for _ in range(connections)))
    errors = 0

    async def run(conn: Connection) -> None:
        nonlocal errors
        for _ in range(per_connection):
            status, _ = await conn.post(path, body)
            errors += status != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in conns))
    return elapsed, errors


def throughput(url: str, client: Any, total: int, clients: int) -> dict[str, Any]:
    body = json.dumps(SMALL).encode()
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    http_rates, client_rates, errors = [], [], 0
    for _ in range(3):
        elapsed, failed = asyncio.run(_concurrent(url, clients, total // clients, "/v2/models/trivial/infer", body))
        http_rates.append(clients * (total // clients) / elapsed)
        errors += failed
        t0 = time.perf_counter()
        handles = [client.infer("trivial", {"x": x}) for _ in range(total)]
        for h in handles:
            h.wait(timeout_s=300)
        client_rates.append(total / (time.perf_counter() - t0))
    http_best, client_best = max(http_rates), max(client_rates)
    return {
        "bench": "http",
        "case": "throughput",
        "http_clients": clients,
        "requests_per_run": total,
        "http_per_s": [round(r, 1) for r in http_rates],
        "client_per_s": [round(r, 1) for r in client_rates],
        "ratio_best": round(http_best / client_best, 3),
        "errors": errors,
    }


def in_flight(url: str, gateway_pid: int, count: int) -> dict[str, Any]:
    body = json.dumps(SMALL).encode()
    gateway = psutil.Process(gateway_pid)
    rss_before = gateway.memory_info().rss
    peak = rss_before

    async def go() -> tuple[float, int]:
        nonlocal peak
        task = asyncio.create_task(_concurrent(url, count, 1, "/v2/models/trivial/infer", body))
        while not task.done():
            peak = max(peak, gateway.memory_info().rss)
            await asyncio.sleep(0.05)
        return await task

    elapsed, errors = asyncio.run(go())
    return {
        "bench": "http",
        "case": "in_flight",
        "requests": count,
        "seconds": round(elapsed, 2),
        "errors": errors,
        "gateway_rss_before_mb": round(rss_before / 2**20, 1),
        "gateway_rss_peak_growth_mb": round((peak - rss_before) / 2**20, 1),
        "gateway_rss_after_growth_mb": round((gateway.memory_info().rss - rss_before) / 2**20, 1),
    }


def large(url: str, repeats: int) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal((16, 2048)).astype(np.float32)
    as_json = json.dumps({"inputs": [{"name": "x", "shape": [16, 2048], "datatype": "FP32", "data": x.tolist()}]})
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [16, 2048], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = head + x.tobytes()
    binary_headers = {"Inference-Header-Content-Length": str(len(head))}

    async def go() -> dict[str, list[float]]:
        conn = await Connection.open(url)
        out: dict[str, list[float]] = {"json": [], "binary": []}
        for i in range(repeats + 3):
            for name, body, headers in (("json", as_json.encode(), {}), ("binary", binary, binary_headers)):
                t0 = time.perf_counter()
                status, _ = await conn.post("/v2/models/wide/infer", body, headers)
                assert status == 200, status
                if i >= 3:  # the first rounds warm up
                    out[name].append((time.perf_counter() - t0) * 1000)
        await conn.close()
        return out

    lat = asyncio.run(go())
    json_p50, binary_p50 = statistics.median(lat["json"]), statistics.median(lat["binary"])
    return {
        "bench": "http",
        "case": "large",
        "shape": [16, 2048],
        "json_body_kb": round(len(as_json) / 1024, 1),
        "binary_body_kb": round(len(binary) / 1024, 1),
        "json_p50_ms": round(json_p50, 2),
        "binary_p50_ms": round(binary_p50, 2),
        "binary_vs_json": round(binary_p50 / json_p50, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (default 10)")
    parser.add_argument("--block", type=int, default=50, help="sequential requests per path per round (default 50)")
    parser.add_argument("--total", type=int, default=2048, help="requests per throughput run (default 2048)")
    parser.add_argument("--clients", type=int, default=256, help="concurrent HTTP clients (default 256)")
    parser.add_argument("--in-flight", type=int, default=2000, help="requests at once through one gateway")
    parser.add_argument("--large-repeats", type=int, default=20, help="16 x 2048 requests per form (default 20)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * args.in_flight + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the gateway inherits it
    with BenchFleet(MAAS_INFER_TIMEOUT_S="300") as fleet, tempfile.TemporaryDirectory() as tmp:
        fleet.register("trivial", add_one(Path(tmp) / "trivial.onnx"))
        fleet.register("wide", mlp(Path(tmp) / "wide.onnx", width=2048, layers=1))
        fleet.worker(0, "bench0@local")
        url = fleet.gateway()
        gateway_pid = next(p for p in fleet.procs if p.name == "gateway").popen.pid
        client = fleet.client
        client.load("trivial").wait()
        client.load("wide").wait()
        for line in (
            latency(url, client, args.rounds, args.block),
            throughput(url, client, args.total, args.clients),
            in_flight(url, gateway_pid, args.in_flight),
            large(url, args.large_repeats),
        ):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
