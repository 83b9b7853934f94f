"""Samples of this worker's device and process, and the service times it observed, for the heartbeat to ship."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import psutil

from app.broker.stats import bucket_of, token_bucket_of
from app.db.devices import DeviceInfo
from app.service_time import device_class as class_of
from workers import nvml


def device_class(device: DeviceInfo) -> str:
    return class_of(device.kind, device.name)


def sample(device: DeviceInfo, process: psutil.Process) -> dict[str, Any]:
    values: dict[str, Any] = {"cpu_pct": process.cpu_percent(None), "rss_bytes": process.memory_info().rss}
    if device.kind == "gpu":
        values.update(nvml.usage(device.index) or {})
    else:
        values["mem_used_bytes"] = None
    return values


class Observations:
    """Service times observed on the infer path, buffered in memory until the heartbeat flushes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[str, str, float, float]] = []

    def add(self, model: str, device_cls: str, size: float, service_s: float) -> None:
        with self._lock:
            self._items.append((model, device_cls, size, service_s))

    def drain(self) -> list[tuple[str, str, float, float]]:
        with self._lock:
            items, self._items = self._items, []
        return items


class RequestStats:
    """Per model version request counts (the Triton families), buffered until the heartbeat adds them to Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deltas: defaultdict[tuple[str, int], defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))

    def request(
        self,
        model: str,
        version: int,
        *,
        error_code: str | None,
        rows: int,
        request_s: float,
        queue_s: float,
        compute_s: float,
    ) -> None:
        with self._lock:
            d = self._deltas[(model, version)]
            if error_code is not None:
                d[f"fail:{error_code}"] += 1
                return
            d["success"] += 1
            d["inference_count"] += rows
            d["request_us"] += round(request_s * 1e6)
            d["queue_us"] += round(queue_s * 1e6)
            d["compute_us"] += round(compute_s * 1e6)
            d[f"b:{bucket_of(request_s)}"] += 1
            d["latency_s"] += request_s
            d["last_ms"] = round(time.time() * 1000)

    def tokens(self, model: str, version: int, *, ttft_s: list[float], itl_s: list[float], tokens: int) -> None:
        """One token step's generation figures: first-token times, inter-token gaps, tokens made."""
        with self._lock:
            d = self._deltas[(model, version)]
            d["gen_tokens"] += tokens
            for name, values in (("ttft", ttft_s), ("itl", itl_s)):
                for value in values:
                    d[f"{name}:b:{token_bucket_of(value)}"] += 1
                    d[f"{name}_s"] += value

    def execution(self, model: str, version: int) -> None:
        with self._lock:
            self._deltas[(model, version)]["exec_count"] += 1

    def drain(self) -> dict[tuple[str, int], dict[str, float]]:
        with self._lock:
            deltas, self._deltas = self._deltas, defaultdict(lambda: defaultdict(float))
        return {key: dict(fields) for key, fields in deltas.items()}

    def restore(self, deltas: dict[tuple[str, int], dict[str, float]]) -> None:
        """Put back counts that could not be shipped, so the next period sends them."""
        with self._lock:
            for key, fields in deltas.items():
                mine = self._deltas[key]
                for name, amount in fields.items():
                    mine[name] = max(mine[name], amount) if name == "last_ms" else mine[name] + amount
