"""Seeded synthetic fleets for the solver's benchmark and tests, and the JSON form of a snapshot.

A fleet: GPUs of 24/40/48/80 GB at different speeds; model sizes heavy-tailed (log-normal); demand Zipf-like over
a random popularity order. "Contended" (the issue's definition) means one replica of every model already fills the
fleet's memory and popular models need several replicas, so something must give. The offered work is
`load_factor` (0.7) of the fleet's usable time (rho x speed).

How contended that is in fact, by `contention()` on seed 0 (one replica each / memory; memory for replicas that
serve all demand / memory; replicas the most popular model needs; models needing more than one):
    50 x 4:    1.00, 1.00, 0.5,  0     <- 12.5 models per GPU: even the top model needs half a GPU, so the
                                          "several replicas" half of the definition does not hold at this size
    200 x 16:  1.00, 1.03, 1.6,  3
    500 x 64:  1.00, 1.05, 5.1,  8
    1000 x 64: 1.00, 1.04, 5.5,  8
    2000 x 256: 1.00, 1.08, 16.7, 25
Serving all demand needs only 3-8% more memory than one replica each, and Zipf demand is uncorrelated with size:
dropping the coldest few percent of memory costs about 1% of demand. So any sensible demand-aware placement serves
97-99% here; the LP bound itself is within 2-4% of the demand greedy (see `bench.solver`'s ceiling field).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from beat.snapshot import Device, ModelDemand, Snapshot

GB = 10**9
#: (memory GB, relative speed, share of the fleet): an A10-, A100-40-, L40S- and H100-like mix
GPU_TYPES = ((24, 0.45, 0.3), (40, 0.8, 0.25), (48, 0.7, 0.25), (80, 1.0, 0.2))
#: Zipf exponent of demand over popularity rank
ZIPF_S = 1.1


def generate_fleet(
    n_models: int,
    n_gpus: int,
    *,
    seed: int = 0,
    contended: bool = True,
    load_factor: float = 0.7,
    **knobs: Any,
) -> Snapshot:
    """A snapshot with nothing placed yet. `knobs` are passed to `Snapshot` (time_limit_s, move_budget, ...)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(GPU_TYPES), size=n_gpus, p=[t[2] for t in GPU_TYPES])
    devices = tuple(
        Device(id=f"g{i:03d}", mem_bytes=GPU_TYPES[k][0] * GB, speed=GPU_TYPES[k][1]) for i, k in enumerate(kinds)
    )
    total_mem = sum(d.mem_bytes for d in devices)
    sizes = rng.lognormal(mean=0.0, sigma=1.0, size=n_models)
    # One replica of every model fills the fleet (contended) or half of it.
    sizes *= (1.0 if contended else 0.5) * total_mem / sizes.sum()
    mem = np.clip(sizes, 0.3 * GB, 78 * GB).astype(np.int64)

    service_s = 0.01 * (mem / GB) ** 0.7
    rank = rng.permutation(n_models) + 1
    share = 1.0 / rank**ZIPF_S
    capacity_work = load_factor * sum(d.speed for d in devices) * 0.9
    demand = share / share.sum() * capacity_work / np.average(service_s, weights=share)
    models = tuple(
        ModelDemand(
            name=f"m{i:04d}",
            mem_bytes=int(mem[i]),
            demand_per_s=float(demand[i]),
            service_s=float(service_s[i]),
            load_cost_s=float(5.0 + 2.0 * mem[i] / GB),
        )
        for i in range(n_models)
    )
    return Snapshot(devices=devices, models=models, **knobs)


def contention(snapshot: Snapshot) -> dict[str, float]:
    """How contended a fleet is, in the terms of the definition above; replicas counted at the mean device speed."""
    speeds = [d.speed for d in snapshot.devices]
    mean_speed = sum(speeds) / max(1, len(speeds))
    memory = sum(d.mem_bytes for d in snapshot.devices)
    need = [max(0.0, m.demand_per_s) * m.service_s / (snapshot.rho * mean_speed) for m in snapshot.models]
    all_demand = sum(m.mem_bytes * max(1, math.ceil(n)) for m, n in zip(snapshot.models, need, strict=True))
    return {
        "mem_one_each": sum(m.mem_bytes for m in snapshot.models) / memory,
        "mem_all_demand": all_demand / memory,
        "top_replicas": max(need, default=0.0),
        "multi_replica_models": sum(n > 1.0 for n in need),
        "offered_work": sum(max(0.0, m.demand_per_s) * m.service_s for m in snapshot.models)
        / (snapshot.rho * sum(speeds)),
    }


def drifted(snapshot: Snapshot, placement: dict[str, tuple[str, ...]], *, seed: int, amount: float = 0.1) -> Snapshot:
    """Next round: every demand scaled by a uniform factor in [1 - amount, 1 + amount], `placement` is current."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0 - amount, 1.0 + amount, size=len(snapshot.models))
    models = tuple(
        dataclasses.replace(m, demand_per_s=m.demand_per_s * float(f), current=placement.get(m.name, ()))
        for m, f in zip(snapshot.models, factors, strict=True)
    )
    return dataclasses.replace(snapshot, models=models)


def snapshot_from_dict(data: dict[str, Any]) -> Snapshot:
    """A snapshot from its JSON form: {"devices": [...Device fields], "models": [...ModelDemand fields], knobs}."""
    devices = tuple(Device(**d) for d in data["devices"])
    models = tuple(
        ModelDemand(**{**m, "pinned": tuple(m.get("pinned", ())), "current": tuple(m.get("current", ()))})
        for m in data["models"]
    )
    knobs = {k: v for k, v in data.items() if k not in ("devices", "models")}
    return Snapshot(devices=devices, models=models, **knobs)


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    return dataclasses.asdict(snapshot)
