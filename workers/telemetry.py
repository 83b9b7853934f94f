"""Samples of this worker's device and process, and the service times it observed, for the heartbeat to ship."""

from __future__ import annotations

import threading
from typing import Any

import psutil

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
