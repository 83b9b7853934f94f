"""``GET /metrics``: the whole fleet in Prometheus text format, from what every process left in Redis and the
database, so one scrape of any gateway sees every worker on every host.

Triton's families keep Triton's exact names and types (``# TYPE nv_inference_request_success counter``, no
``_total``), so dashboards built for Triton read them unchanged; prometheus_client would rename its counters with a
``_total`` suffix, so those few lines are written here. Everything else — GPU gauges, the ``maas_*`` families,
the latency histogram — is built with prometheus_client's metric families and written by its exposition.

Failure ``reason`` labels are the fleet's stable error codes (``INVALID_INPUT``, ``MODEL_ERROR``,
``DEADLINE_EXCEEDED``, ``QUEUE_FULL`` ...), finer than Triton's four categories.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis.asyncio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from sqlalchemy import select

from app.broker import aging_index, stats
from app.broker.layout import PRIORITY_LEVELS, model_queue, priority_lists
from app.control import device_views
from app.db import replicas as replica_rows
from app.db.schema import AllocationRun, Device, Model
from app.db.session import session_scope
from app.lifecycle import ReplicaState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Database reads behind a scrape are reused this long (several Prometheus servers may scrape each gateway).
DB_CACHE_S = 2.0

#: Triton's per-request counters: (family, our field, help).
_TRITON_COUNTERS = (
    ("nv_inference_request_success", "success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_count", "inference_count", "Number of inferences performed (a batch of n rows counts n)"),
    ("nv_inference_exec_count", "exec_count", "Number of model executions performed (a batch counts once)"),
    ("nv_inference_request_duration_us", "request_us", "Cumulative request duration, submission to answer, in us"),
    ("nv_inference_queue_duration_us", "queue_us", "Cumulative time requests spent waiting in queues, in us"),
    ("nv_inference_compute_infer_duration_us", "compute_us", "Cumulative model execution time, in us"),
)

#: Every series name ``/metrics`` writes for the fleet, as Prometheus stores it: the counters prometheus_client
#: writes carry ``_total`` (Triton's do not), a histogram is its ``_bucket``, ``_sum`` and ``_count`` series.
#: Dashboards and alerts may use exactly these (tests/unit/test_compose.py checks the Grafana dashboard's queries;
#: tests/unit/test_metrics_names.py checks this list against what a scrape holds). prometheus_client's own
#: ``process_*`` and ``python_*`` series come on top.
SERIES: tuple[str, ...] = (
    *(family for family, _, _ in _TRITON_COUNTERS),
    "nv_inference_request_failure",
    "nv_inference_pending_request_count",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_utilization",
    "maas_queue_depth",
    "maas_replicas",
    "maas_replica_memory_bytes",
    "maas_allocation_runs_total",
    "maas_allocation_last_objective",
    "maas_allocation_last_gap",
    "maas_allocation_last_solve_seconds",
    "maas_allocation_last_moves",
    "maas_aging_promotions_total",
    "maas_ledger_resends_total",
    "maas_gateway_requests_in_flight",
    *(f"maas_request_latency_seconds_{part}" for part in ("bucket", "sum", "count")),
    "maas_generated_tokens_total",
    *(f"maas_time_to_first_token_seconds_{part}" for part in ("bucket", "sum", "count")),
    *(f"maas_inter_token_latency_seconds_{part}" for part in ("bucket", "sum", "count")),
    "maas_generation_sequences_in_flight",
    "maas_generation_kv_cache_bytes",
    *(f"maas_gateway_http_request_duration_seconds_{part}" for part in ("bucket", "sum", "count", "created")),
)

#: The gateway process's own HTTP timings (per process: Prometheus labels each scrape target).
_HTTP_SECONDS = Histogram("maas_gateway_http_request_duration_seconds", "Gateway request handling time", ["route"])


def observe_http(path: str, seconds: float) -> None:
    route = path.split("/")[1] if "/" in path else path
    _HTTP_SECONDS.labels(route=route or "/").observe(seconds)


def _labels(values: dict[str, str]) -> str:
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in values.values())
    return ",".join(f'{k}="{v}"' for k, v in zip(values, escaped, strict=True))


def triton_text(counts: dict[tuple[str, str], dict[str, float]], pending: dict[str, int]) -> str:
    """Triton's families, named and typed as Triton writes them."""
    lines: list[str] = []
    for family, field, help_text in _TRITON_COUNTERS:
        lines += [f"# HELP {family} {help_text}", f"# TYPE {family} counter"]
        for (model, version), fields in sorted(counts.items()):
            value = fields.get(field, 0.0)
            lines.append(f"{family}{{{_labels({'model': model, 'version': version})}}} {floatToGoString(value)}")
    family = "nv_inference_request_failure"
    lines += [f"# HELP {family} Number of failed inference requests, by reason", f"# TYPE {family} counter"]
    for (model, version), fields in sorted(counts.items()):
        for name, value in sorted(fields.items()):
            if name.startswith("fail:"):
                labels = _labels({"model": model, "reason": name[5:], "version": version})
                lines.append(f"{family}{{{labels}}} {floatToGoString(value)}")
    family = "nv_inference_pending_request_count"
    lines += [f"# HELP {family} Requests waiting in the model's queue", f"# TYPE {family} gauge"]
    for model, waiting in sorted(pending.items()):
        lines.append(f"{family}{{{_labels({'model': model, 'version': ''})}}} {waiting}")
    return "\n".join(lines) + "\n"


class _Snapshot:
    """What one scrape read: the collector below turns it into metric families."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], dict[str, float]] = {}
        self.depths: dict[str, list[int]] = {}
        self.promotions: dict[str, int] = {}
        self.fleet_counters: dict[str, float] = {}
        self.db: dict[str, Any] = {}
        self.in_flight = 0
        self.live: dict[tuple[str, str], dict[str, float]] = {}


class _Collector:
    def __init__(self, snap: _Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from self._gpus()
        yield from self._fleet()
        yield self._latency()
        yield from self._generation()

    def _gpus(self) -> Iterable[Metric]:
        labels = ["gpu_uuid", "device", "worker", "kind"]
        total = GaugeMetricFamily(
            "nv_gpu_memory_total_bytes", "Device memory (virtual: the declared budget)", labels=labels
        )
        used = GaugeMetricFamily(
            "nv_gpu_memory_used_bytes", "Device memory used (virtual: replica footprints held)", labels=labels
        )
        util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilisation 0.0-1.0 (virtual devices: none)", labels=labels)
        for d in self.snap.db.get("devices", []):
            values = [d["uuid"], d["name"], d["worker"], d["kind"]]
            total.add_metric(values, d["mem_bytes"])
            used.add_metric(values, d["used_bytes"])
            if d["util"] is not None:
                util.add_metric(values, d["util"])
        return [total, used, util]

    def _fleet(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "maas_queue_depth", "Requests waiting, by model and priority level", labels=["model", "level"]
        )
        for model, levels in sorted(self.snap.depths.items()):
            for level, n in zip(PRIORITY_LEVELS, levels, strict=True):
                depth.add_metric([model, str(level)], n)
        replicas = GaugeMetricFamily(
            "maas_replicas", "Replicas by model and lifecycle state", labels=["model", "state"]
        )
        for (model, state), n in sorted(self.snap.db.get("replica_states", {}).items()):
            replicas.add_metric([model, state], n)
        memory = GaugeMetricFamily(
            "maas_replica_memory_bytes",
            "Memory each live replica holds (measured at load, else declared)",
            labels=["model", "version", "worker", "device"],
        )
        for r in self.snap.db.get("replica_memory", []):
            memory.add_metric([r["model"], str(r["version"]), r["worker"], r["device"]], r["bytes"])
        runs = CounterMetricFamily("maas_allocation_runs", "Allocation runs by status", labels=["status"])
        for status, n in sorted(self.snap.db.get("run_counts", {}).items()):
            runs.add_metric([status], n)
        last = self.snap.db.get("last_run") or {}
        out: list[Metric] = [depth, replicas, memory, runs]
        for name, key, help_text in (
            ("maas_allocation_last_objective", "objective", "Objective of the last allocation run"),
            ("maas_allocation_last_gap", "gap", "Gap to the bound of the last allocation run (0.01 = 1%)"),
            ("maas_allocation_last_solve_seconds", "solve_s", "Solve time of the last allocation run"),
            ("maas_allocation_last_moves", "moves", "Moves planned by the last allocation run"),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            if last.get(key) is not None:
                gauge.add_metric([], float(last[key]))
            out.append(gauge)
        promotions = CounterMetricFamily("maas_aging_promotions", "Promoted copies sent by aging", labels=["model"])
        for model, n in sorted(self.snap.promotions.items()):
            promotions.add_metric([model], n)
        resends = CounterMetricFamily("maas_ledger_resends", "Accepted requests found lost and sent again")
        resends.add_metric([], self.snap.fleet_counters.get("ledger_resent", 0.0))
        in_flight = GaugeMetricFamily("maas_gateway_requests_in_flight", "Requests this gateway process awaits")
        in_flight.add_metric([], self.snap.in_flight)
        return [*out, promotions, resends, in_flight]

    def _latency(self) -> Metric:
        family = HistogramMetricFamily(
            "maas_request_latency_seconds", "Request latency, submission to answer", labels=["model", "version"]
        )
        bounds = [*map(str, stats.LATENCY_BUCKETS_S), "+Inf"]
        for (model, version), fields in sorted(self.snap.counts.items()):
            cumulative, buckets = 0.0, []
            for i, bound in enumerate(bounds):
                cumulative += fields.get(f"b:{i}", 0.0)
                buckets.append((bound, cumulative))
            family.add_metric([model, version], buckets, fields.get("latency_s", 0.0))
        return family

    def _generation(self) -> Iterable[Metric]:
        """Generative models: tokens made, time to first token, inter-token latency; running sequences and KV."""
        labels = ["model", "version"]
        tokens = CounterMetricFamily("maas_generated_tokens", "Tokens generated", labels=labels)
        ttft = HistogramMetricFamily(
            "maas_time_to_first_token_seconds", "Submission to first generated token", labels=labels
        )
        itl = HistogramMetricFamily(
            "maas_inter_token_latency_seconds", "Time between two tokens of one sequence", labels=labels
        )
        bounds = [*map(str, stats.TOKEN_BUCKETS_S), "+Inf"]
        for (model, version), fields in sorted(self.snap.counts.items()):
            if "gen_tokens" not in fields:
                continue
            tokens.add_metric([model, version], fields["gen_tokens"])
            for family, name in ((ttft, "ttft"), (itl, "itl")):
                cumulative, buckets = 0.0, []
                for i, bound in enumerate(bounds):
                    cumulative += fields.get(f"{name}:b:{i}", 0.0)
                    buckets.append((bound, cumulative))
                family.add_metric([model, version], buckets, fields.get(f"{name}_s", 0.0))
        seqs = GaugeMetricFamily(
            "maas_generation_sequences_in_flight", "Sequences a worker is generating", labels=["worker", "model"]
        )
        kv = GaugeMetricFamily(
            "maas_generation_kv_cache_bytes",
            "KV-cache bytes of a worker's running sequences",
            labels=["worker", "model"],
        )
        for (worker, model), value in sorted(self.snap.live.items()):
            seqs.add_metric([worker, model], value["seqs"])
            kv.add_metric([worker, model], value["kv_bytes"])
        return [tokens, ttft, itl, seqs, kv]


def _read_db(url: str, heartbeat_timeout_s: float) -> dict[str, Any]:
    with session_scope(url) as session:
        views = {v.worker_name: v for v in device_views(session, heartbeat_timeout_s)}
        devices = []
        for d in session.scalars(select(Device).order_by(Device.worker_name)):
            used = (
                d.mem_used_bytes
                if d.kind == "gpu" and d.mem_used_bytes is not None
                else views[d.worker_name].used_bytes
            )
            devices.append(
                {
                    "uuid": d.uuid,
                    "name": d.name,
                    "worker": d.worker_name,
                    "kind": d.kind,
                    "mem_bytes": d.mem_bytes,
                    "used_bytes": used,
                    "util": d.util_pct / 100 if d.kind == "gpu" and d.util_pct is not None else None,
                }
            )
        measured = replica_rows.measured_footprints(session)
        states: dict[tuple[str, str], int] = {}
        memory = []
        for r in replica_rows.all_with_devices(session):
            model = r.version.model.name
            states[(model, r.state)] = states.get((model, r.state), 0) + 1
            if r.state in (ReplicaState.READY.value, ReplicaState.LOADING.value, ReplicaState.DRAINING.value):
                memory.append(
                    {
                        "model": model,
                        "version": r.version.version,
                        "worker": r.device.worker_name,
                        "device": r.device.name,
                        "bytes": replica_rows.held_bytes(r, measured),
                    }
                )
        run_counts: dict[str, int] = {}
        for status in session.scalars(select(AllocationRun.status)):
            run_counts[status] = run_counts.get(status, 0) + 1
        last = session.scalars(select(AllocationRun).order_by(AllocationRun.id.desc())).first()
        last_run = (
            {"objective": last.objective, "gap": last.gap, "solve_s": last.solve_s, "moves": len(last.moves or [])}
            if last is not None
            else None
        )
        models = list(session.scalars(select(Model.name).order_by(Model.name)))
    return {
        "devices": devices,
        "replica_states": states,
        "replica_memory": memory,
        "run_counts": run_counts,
        "last_run": last_run,
        "models": models,
    }


class _DbCache:
    def __init__(self) -> None:
        self.at = 0.0
        self.value: dict[str, Any] = {}


_db_cache = _DbCache()


async def render(fleet: Any, in_flight: int) -> bytes:
    """The whole exposition for one scrape."""
    client: redis.asyncio.Redis = fleet.redis
    snap = _Snapshot()
    snap.in_flight = in_flight
    if time.monotonic() - _db_cache.at > DB_CACHE_S:
        _db_cache.value = await asyncio.to_thread(
            _read_db, fleet.settings.sqlalchemy_url, fleet.settings.heartbeat_timeout_s
        )
        _db_cache.at = time.monotonic()
    snap.db = _db_cache.value
    models = snap.db.get("models", [])
    snap.counts = await stats.read_all(client)
    pipe = client.pipeline(transaction=False)
    for model in models:
        for key in priority_lists(model_queue(model)):
            pipe.llen(key)
    flat = await pipe.execute()
    levels = len(PRIORITY_LEVELS)
    snap.depths = {m: [int(n) for n in flat[i * levels : (i + 1) * levels]] for i, m in enumerate(models)}
    snap.promotions = await aging_index.promotions_all(client)
    snap.fleet_counters = await stats.fleet_counters(client)
    snap.live = await stats.read_live(client, fleet.settings.heartbeat_timeout_s)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))
    pending = {m: sum(levels_) for m, levels_ in snap.depths.items()}
    process = generate_latest()  # this process's own metrics (HTTP timings), from the default registry
    return triton_text(snap.counts, pending).encode() + generate_latest(registry) + process


async def statistics(client: redis.asyncio.Redis, model: str | None, version: str | None) -> dict[str, Any]:
    """The statistics extension's document, from the same counts as the metrics."""
    counts = await stats.read_all(client)
    out = []
    for (m, v), fields in sorted(counts.items()):
        if (model is not None and m != model) or (version is not None and v != version):
            continue
        failed = sum(value for name, value in fields.items() if name.startswith("fail:"))
        success = fields.get("success", 0.0)
        out.append(
            {
                "name": m,
                "version": v,
                "last_inference": int(fields.get("last_ms", 0)),
                "inference_count": int(fields.get("inference_count", 0)),
                "execution_count": int(fields.get("exec_count", 0)),
                "inference_stats": {
                    "success": {"count": int(success), "ns": int(fields.get("request_us", 0) * 1000)},
                    "fail": {"count": int(failed), "ns": 0},
                    "queue": {"count": int(success), "ns": int(fields.get("queue_us", 0) * 1000)},
                    "compute_infer": {"count": int(success), "ns": int(fields.get("compute_us", 0) * 1000)},
                },
                "batch_stats": [],
            }
        )
    return {"model_stats": out}
