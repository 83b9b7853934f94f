"""``GET /metrics`` scraped by a real Prometheus server: two workers serve iris through the gateway, and the counts
Prometheus stores add up to the requests sent.

The test starts its own ``prometheus`` (Debian's package; ``scripts/ensure-services.sh`` installs it) on a free
loopback port with a config that scrapes the gateway every second with the gateway's API key, and stops it by its
pid afterwards. Every wait polls Prometheus' query API with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.fleet import wait_for
from harness.servers import free_port

pytestmark = pytest.mark.integration

API_KEY = "metrics-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
WORKERS = {"w0@test", "w1@test"}
JOB = "maas-gateway"
#: Generous for a busy 2-core machine: a worker flushes counts every 0.5 s and Prometheus scrapes every 1 s.
DEADLINE_S = 90.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The ``prometheus`` binary, installed (as ``make test`` would) when missing and root; else the test skips."""
    found = shutil.which("prometheus")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("no prometheus binary and not root to install it: apt-get install prometheus (or make services)")
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-services.sh")], check=True, timeout=900)
    found = shutil.which("prometheus")
    assert found, "scripts/ensure-services.sh ran but no prometheus binary is on PATH"
    return found


def _http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()  # case-insensitive lookups
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _infer(gateway: str, rows: list[list[float]], request_id: str) -> tuple[int, Any, dict]:
    body = json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "X", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}],
        }
    ).encode()
    status, headers, content = _http(
        f"{gateway}/v2/models/iris/infer", "POST", body, {**AUTH, "Content-Type": "application/json"}
    )
    return status, headers, json.loads(content)


class Prometheus:
    """A running ``prometheus`` and its HTTP API."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=30) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 for a query that does not parse, with Prometheus' reason
            raise AssertionError(f"{path} {params}: {exc.code} {exc.read().decode(errors='replace')}") from None
        assert doc["status"] == "success", doc
        return doc["data"]

    def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def scalar(self, promql: str) -> float | None:
        """The value of a query that yields at most one series (``sum(...)``); None while it yields none."""
        result = self.vector(promql)
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def wait_value(self, promql: str, expected: float, what: str) -> None:
        """Poll until ``promql`` reads ``expected``; the timeout names the last value read."""
        seen: list[float | None] = []

        def reached() -> bool:
            seen.append(self.scalar(promql))
            return seen[-1] == expected

        try:
            wait_for(reached, DEADLINE_S, what, interval_s=0.25)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {promql} last read {seen[-1]!r}, expected {expected:g}") from None

    def target_health(self) -> str:
        targets = self.api("targets")["activeTargets"]
        return "; ".join(f"{t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}" for t in targets)


@pytest.fixture
def gateway(fleet, client, register, iris) -> str:
    """iris with one replica on each of two workers (one virtual device each), and a gateway with an API key."""
    register("iris", iris["path"])
    fleet.worker(0, "w0@test")
    fleet.worker(1, "w1@test")
    for worker in sorted(WORKERS):
        assert client.load("iris", worker=worker).wait()["state"] == "READY"
    _, url = fleet.gateway(MAAS_API_KEYS=API_KEY)
    return url


@pytest.fixture
def prometheus(prometheus_binary: str, gateway: str, tmp_path: Path) -> Iterator[Prometheus]:
    target = urllib.parse.urlsplit(gateway).netloc
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": API_KEY},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return _http(f"{server.url}/-/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, 60, "prometheus to be ready", interval_s=0.2)
        try:
            wait_for(lambda: server.scalar(f'sum(up{{job="{JOB}"}})') == 1, DEADLINE_S, "a successful scrape")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; targets: {server.target_health()}") from None
        yield server
    finally:
        proc.terminate()  # by its pid; the Popen is ours
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_prometheus_scrapes_fleet_wide_counts_from_two_workers(prometheus_binary, gateway, prometheus, iris):
    started = time.monotonic()
    # Fresh Redis: nothing counted yet, so the success series do not exist before the first request.
    before = prometheus.scalar('sum(nv_inference_request_success{model="iris"})') or 0.0

    # Concurrent rounds until both workers have answered (they compete for one queue), bounded either way.
    x, expected = iris["x"], iris["expected"]
    served_by: dict[str, int] = {}
    sent = rows = 0
    with ThreadPoolExecutor(4) as pool:
        for round_ in range(25):
            # Requests of 1 to 3 rows, so rows and requests differ.
            batch = [(slice(8 * round_ + 2 * i, 8 * round_ + 2 * i + 1 + i % 3), f"r{round_}-{i}") for i in range(4)]
            answers = pool.map(lambda item: _infer(gateway, x[item[0]].tolist(), item[1]), batch)
            for (part, _), (status, _, answer) in zip(batch, answers, strict=True):
                assert status == 200, answer
                labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
                assert labels == expected[part].tolist()
                worker = answer["parameters"]["worker"]
                served_by[worker] = served_by.get(worker, 0) + 1
                sent += 1
                rows += len(labels)
            if set(served_by) == WORKERS and round_ >= 2:
                break
    assert set(served_by) == WORKERS, f"one worker served everything: {served_by}"

    # Prometheus' own reading of the gateway's counters: exactly what was sent, summed over versions.
    prometheus.wait_value('sum(nv_inference_request_success{model="iris"})', before + sent, "every success counted")
    assert prometheus.scalar('sum(nv_inference_count{model="iris"})') == rows
    assert prometheus.scalar('sum(maas_request_latency_seconds_count{model="iris"})') == sent
    assert prometheus.scalar('sum(maas_request_latency_seconds_bucket{model="iris",le="+Inf"})') == sent
    executions = prometheus.scalar('sum(nv_inference_exec_count{model="iris"})')
    assert executions is not None and 1 <= executions <= sent  # a batch executes once
    for family in ("request", "queue", "compute_infer"):
        assert (prometheus.scalar(f'sum(nv_inference_{family}_duration_us{{model="iris"}})') or 0) > 0, family
    assert prometheus.scalar('sum(nv_inference_request_failure{model="iris"})') is None  # no failure yet

    # Both replicas, one per worker, as the fleet sees them.
    assert prometheus.scalar('sum(maas_replicas{model="iris",state="READY"})') == 2
    held = prometheus.vector('sum by (worker) (maas_replica_memory_bytes{model="iris"})')
    assert {labels["worker"] for labels, _ in held} == WORKERS and all(v > 0 for _, v in held)

    # GPU gauges: both virtual devices (2 GiB each, as the env fixture declares), each holding its replica.
    status, _, text = _http(f"{gateway}/metrics", headers=AUTH)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    total = {s.labels["gpu_uuid"]: s for s in families["nv_gpu_memory_total_bytes"].samples}
    used = {s.labels["gpu_uuid"]: s for s in families["nv_gpu_memory_used_bytes"].samples}
    assert len(total) == 2 and set(used) == set(total)
    assert {s.labels["worker"] for s in total.values()} == WORKERS
    assert {s.labels["kind"] for s in [*total.values(), *used.values()]} == {"virtual"}
    assert all(s.value == 2 * 2**30 for s in total.values())
    assert all(0 < used[uuid].value <= total[uuid].value for uuid in total)
    assert not families["nv_gpu_utilization"].samples  # virtual devices have none
    # ... and the same two devices in Prometheus.
    scraped = prometheus.vector('nv_gpu_memory_total_bytes{kind="virtual"}')
    assert {labels["gpu_uuid"] for labels, _ in scraped} == set(total)

    # A bad input fails as INVALID_INPUT and is counted as such, not as a success.
    status, headers, answer = _infer(gateway, [[1.0, 2.0, 3.0]], "bad-1")
    assert status == 400, (headers, answer)
    assert headers["X-Maas-Error-Code"] == "INVALID_INPUT", (headers, answer)
    prometheus.wait_value(
        'sum(nv_inference_request_failure{model="iris",reason="INVALID_INPUT"})', 1, "the bad input counted"
    )
    assert prometheus.scalar('sum(nv_inference_request_failure{model="iris"})') == 1
    assert prometheus.scalar('sum(nv_inference_request_success{model="iris"})') == before + sent

    # Every query of the Grafana dashboard is valid PromQL on these series (Grafana's variables filled in as Grafana
    # would), and the gauge panels show the fleet.
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "maas-fleet.json").read_text())
    panels = [p for p in dashboard["panels"] for p in [p, *p.get("panels", [])]]
    for target in [t for p in panels for t in p.get("targets", [])]:
        query = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
        result = prometheus.vector(query)  # the API answers 400 to a query that does not parse
        if "nv_gpu_memory" in query or "maas_replicas" in query:
            assert result, query
    print(f"sent {sent} requests ({rows} rows), served by {served_by}; {time.monotonic() - started:.1f}s")


def test_a_whole_number_delta_adds_to_a_float_sum(env):
    """``latency_s`` holds a float sum; a period whose latencies sum to a whole number (0.0 when clock skew clamps
    them all) must still add to it (HINCRBY on a float field is refused, and the period's other counts with it)."""
    import redis

    from app.broker import stats
    from app.broker.keys import model_stats

    client = redis.Redis.from_url(env["REDIS_URL"])
    stats.add(client, {("iris", 1): {"success": 1, "latency_s": 0.25}})
    stats.add(client, {("iris", 1): {"success": 1, "latency_s": 0.0}})
    stats.add(client, {("iris", 1): {"success": 2, "latency_s": 1.0}})
    held = {k.decode(): float(v) for k, v in client.hgetall(model_stats("iris", 1)).items()}
    assert held == {"success": 4.0, "latency_s": 1.25}
