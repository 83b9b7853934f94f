"""What one replica of a model does on one device: its service time, its rate, and whether it may go there. Pure.

Every placement in the project (the MILP, both greedies, the candidate pruning, `maas allocation show`) asks
these questions here, so a per-class measurement or a latency objective counts the same way everywhere.

A model's service time on a device is, in order of preference:
1. the time measured (or declared) for that model on that device's class (`ModelDemand.service_s_by_class`);
2. else its reference service time scaled by the device's speed factor: `service_s / speed`.
The first is what real fleets need: a 7B model on a T4 against an H100 is not one "device speed" number, and a
small model gains little from a fast card while a large one gains a lot.
"""

from __future__ import annotations

import numpy as np

from beat.snapshot import Device, ModelDemand, Snapshot


def service_s(model: ModelDemand, device: Device) -> float:
    """Seconds one request of `model` takes on `device`."""
    measured = model.service_s_by_class.get(device.device_class) if device.device_class else None
    if measured is not None and measured > 0:
        return measured
    return model.service_s / device.speed


def meets_slo(model: ModelDemand, device: Device) -> bool:
    """Whether `device` can meet the model's latency objective at all: its service time alone is within it.

    Queueing adds to the service time, so this is a necessary condition, not a sufficient one; the time-share
    cap (`Snapshot.rho`) is what keeps the queue short on the devices that pass.
    """
    return model.p99_ms is None or service_s(model, device) * 1000.0 <= model.p99_ms


def eligible(model: ModelDemand, device: Device) -> bool:
    """Memory fits and the latency objective can be met."""
    return model.mem_bytes <= device.mem_bytes and meets_slo(model, device)


def service_matrix(snapshot: Snapshot, models: tuple[ModelDemand, ...]) -> np.ndarray:
    """service_s(model, device) for every model (rows) and device (columns); vectorised `service_s`."""
    speed = np.array([d.speed for d in snapshot.devices], dtype=float)
    base = np.array([m.service_s for m in models], dtype=float)
    matrix = base[:, None] / speed[None, :] if models else np.zeros((0, speed.size))
    columns: dict[str, list[int]] = {}
    for g, d in enumerate(snapshot.devices):
        if d.device_class:
            columns.setdefault(d.device_class, []).append(g)
    for i, m in enumerate(models):
        for device_class, measured in m.service_s_by_class.items():
            if measured > 0 and device_class in columns:
                matrix[i, columns[device_class]] = measured
    return matrix


def eligible_matrix(snapshot: Snapshot, models: tuple[ModelDemand, ...], service: np.ndarray) -> np.ndarray:
    """eligible(model, device) for every model and device, given `service_matrix`."""
    caps = np.array([d.mem_bytes for d in snapshot.devices], dtype=float)
    mems = np.array([m.mem_bytes for m in models], dtype=float)
    slo_s = np.array([np.inf if m.p99_ms is None else m.p99_ms / 1000.0 for m in models], dtype=float)
    return (mems[:, None] <= caps[None, :]) & (service <= slo_s[:, None] + 1e-12)


def slo_reason(model: ModelDemand, devices: tuple[Device, ...]) -> str:
    """Why no device can serve `model` within its latency objective, naming the classes and their times."""
    times: dict[str, float] = {}
    for d in devices:
        if d.mem_bytes >= model.mem_bytes:
            label = d.device_class or d.id
            times[label] = min(times.get(label, float("inf")), service_s(model, d))
    seen = ", ".join(f"{ms * 1000:.0f} ms on {label}" for label, ms in sorted(times.items(), key=lambda kv: kv[1]))
    return f"p99 objective {model.p99_ms:g} ms cannot be met: service time {seen or 'unknown (no device fits)'}"
