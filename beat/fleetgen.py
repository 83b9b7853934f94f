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
import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from beat.pairs import service_matrix
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


# --- Realistic families -------------------------------------------------------------------------------------------
#
# Each is reproducible by seed and writes out as a `--fleet` file (`snapshot_to_dict`). Per-model x per-class
# service times are what makes them realistic: how much faster a card is depends on the model. Decode-bound LLMs
# follow memory bandwidth (an H100-class card is ~6x a T4 on a 7B model), small encoders gain far less (launch and
# host overhead dominate), so each model gets its own exponent on the class's bandwidth ratio.

#: class name -> (memory GB, bandwidth relative to the 80 GB card): H100-, A100-40-, L4- and T4-like
GPU_CLASSES: dict[str, tuple[int, float]] = {
    "h100-80": (80, 1.0),
    "a100-40": (40, 0.47),
    "l4-24": (24, 0.09),
    "t4-16": (16, 0.095),
}
#: share of cards of each class in the mixed families
CLASS_MIX = {"h100-80": 0.2, "a100-40": 0.3, "l4-24": 0.3, "t4-16": 0.2}


class Family(enum.StrEnum):
    LLM_ZOO = "llm_zoo"  # 0.5B-32B LLMs at FP16, embeddings, rerankers, speech; Zipf demand; 80/40/24/16 GB mix
    MANY_SMALL = "many_small"  # hundreds of small models on a few cards: GPU time binds, not memory
    MEMORY_BOUND = "memory_bound"  # identical cards, one replica each fills memory, popular models need several
    POPULAR_LARGE = "popular_large"  # one popular 32B model needing several big cards, beside a zoo of small ones


#: default (models, gpus) of each family, as `bench.solver` runs it
FAMILY_SIZES = {
    Family.LLM_ZOO: (150, 32),
    Family.MANY_SMALL: (400, 8),
    Family.MEMORY_BOUND: (120, 16),
    Family.POPULAR_LARGE: (100, 24),
}

#: (kind, share of models, parameter range in billions or memory range in GB, exponent range on bandwidth)
ZooKind = tuple[str, float, tuple[float, float], tuple[float, float]]
_ZOO_KINDS: tuple[ZooKind, ...] = (
    ("llm", 0.45, (0.5, 32.0), (0.8, 1.0)),
    ("embedding", 0.25, (0.1, 1.3), (0.2, 0.45)),
    ("reranker", 0.15, (0.3, 2.2), (0.3, 0.55)),
    ("speech", 0.15, (0.1, 3.2), (0.45, 0.7)),
)


def generate_family(
    family: Family | str, *, seed: int = 0, n_models: int = 0, n_gpus: int = 0, **knobs: Any
) -> Snapshot:
    """A snapshot of `family` with nothing placed; sizes default to `FAMILY_SIZES`; `knobs` go to `Snapshot`."""
    family = Family(family)
    default_models, default_gpus = FAMILY_SIZES[family]
    n_models, n_gpus = n_models or default_models, n_gpus or default_gpus
    rng = np.random.default_rng([seed, list(Family).index(family)])
    if family is Family.MEMORY_BOUND:
        devices = _devices(n_gpus, {"a100-40": 1.0}, rng)
    elif family is Family.MANY_SMALL:
        devices = _devices(n_gpus, {"h100-80": 0.5, "l4-24": 0.5}, rng)
    else:
        devices = _devices(n_gpus, CLASS_MIX, rng)
    total_mem = sum(d.mem_bytes for d in devices)

    if family is Family.MANY_SMALL:
        kinds: Sequence[ZooKind] = [
            ("embedding", 0.6, (0.1, 1.3), (0.2, 0.45)),
            ("reranker", 0.4, (0.3, 2.2), (0.3, 0.55)),
        ]
        specs = _zoo(n_models, kinds, rng)
        load_factor = 1.3  # GPU time binds: more work is offered than the cards can do
    elif family is Family.MEMORY_BOUND:
        specs = _zoo(n_models, _ZOO_KINDS[:1] + _ZOO_KINDS[2:], rng, max_gb=36.0)
        scale = 0.9 * total_mem / sum(mem for _, mem, _, _ in specs)
        specs = [(kind, mem * scale, base, exp) for kind, mem, base, exp in specs]
        load_factor = 0.85
    else:
        specs = _zoo(n_models, _ZOO_KINDS, rng)
        load_factor = 0.7
    if family is Family.POPULAR_LARGE:
        specs[0] = ("llm", 32.0 * 2.2 * GB, 0.02 * 32.0, 1.0)

    demand_share = 1.0 / (rng.permutation(n_models) + 1.0) ** ZIPF_S
    if family is Family.POPULAR_LARGE:
        demand_share[0] = demand_share.max() * 3.0  # the 32B model is the most popular by far
    classes = sorted({d.device_class for d in devices})
    bandwidth = {c: GPU_CLASSES[c][1] for c in classes}
    models = []
    for i, (kind, mem, base_s, exponent) in enumerate(specs):
        noise = rng.lognormal(0.0, 0.1, size=len(classes))
        by_class = {c: float(base_s / bandwidth[c] ** exponent * n) for c, n in zip(classes, noise, strict=True)}
        models.append((f"{kind}-{i:03d}", int(mem), by_class))
    # Offered work: load_factor of the fleet's usable time, each request timed on the model's mean class.
    mean_s = np.array([np.mean(list(by_class.values())) for _, _, by_class in models])
    capacity_work = load_factor * len(devices) * 0.9
    demand = demand_share / demand_share.sum() * capacity_work / np.average(mean_s, weights=demand_share)
    reference = min(classes, key=lambda c: -bandwidth[c])
    out = tuple(
        ModelDemand(
            name=name,
            mem_bytes=mem,
            demand_per_s=float(demand[i]),
            service_s=by_class[reference],
            load_cost_s=float(5.0 + 2.0 * mem / GB),
            service_s_by_class=by_class,
        )
        for i, (name, mem, by_class) in enumerate(models)
    )
    return Snapshot(devices=devices, models=out, **knobs)


def _devices(n_gpus: int, mix: dict[str, float], rng: np.random.Generator) -> tuple[Device, ...]:
    names = sorted(mix)
    kinds = rng.choice(len(names), size=n_gpus, p=[mix[c] / sum(mix.values()) for c in names])
    # At least one card of the largest class, so every model of the zoo fits somewhere.
    largest = max(names, key=lambda c: GPU_CLASSES[c][0])
    if names.index(largest) not in kinds:
        kinds[0] = names.index(largest)
    return tuple(
        Device(
            id=f"g{i:03d}",
            mem_bytes=GPU_CLASSES[names[k]][0] * GB,
            speed=GPU_CLASSES[names[k]][1],
            device_class=names[k],
        )
        for i, k in enumerate(kinds)
    )


def _zoo(
    n_models: int,
    kinds: Sequence[ZooKind],
    rng: np.random.Generator,
    max_gb: float = 78.0,
) -> list[tuple[str, float, float, float]]:
    """(kind, memory bytes, reference service s, bandwidth exponent) per model."""
    shares = np.array([k[1] for k in kinds])
    picks = rng.choice(len(kinds), size=n_models, p=shares / shares.sum())
    specs = []
    for k in picks.tolist():
        kind, _, (low, high), (e_low, e_high) = kinds[k]
        size = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        exponent = float(rng.uniform(e_low, e_high))
        if kind == "llm":
            mem_gb = min(size * 2.2, max_gb)  # FP16 weights plus ~10% for activations and a small KV cache
            base_s = 0.02 * size  # a short generation, decode-bound: time grows with the weights read per token
        else:
            mem_gb = min(size, max_gb)
            base_s = 0.004 + 0.01 * size
        specs.append((kind, mem_gb * GB, base_s, exponent))
    return specs


def reshuffled(snapshot: Snapshot, placement: dict[str, tuple[str, ...]], *, seed: int, share: float = 0.3) -> Snapshot:
    """Next round after a popularity shift: `share` of the models swap demands among themselves at random."""
    rng = np.random.default_rng(seed)
    n = len(snapshot.models)
    chosen = rng.choice(n, size=max(2, round(share * n)), replace=False) if n >= 2 else np.arange(n)
    demands = [m.demand_per_s for m in snapshot.models]
    shuffled = list(demands)
    for src, dst in zip(chosen.tolist(), rng.permutation(chosen).tolist(), strict=True):
        shuffled[dst] = demands[src]
    models = tuple(
        dataclasses.replace(m, demand_per_s=d, current=placement.get(m.name, ()), planned_demand_per_s=m.demand_per_s)
        for m, d in zip(snapshot.models, shuffled, strict=True)
    )
    return dataclasses.replace(snapshot, models=models)


def contention(snapshot: Snapshot) -> dict[str, float]:
    """How contended a fleet is, in the terms of the definition above; replicas counted at the mean service time."""
    # Service time of each model at the fleet's mean rate (per-class times where the model has them): the harmonic
    # mean over the cards, which is service_s / mean speed when speed factors are all there is.
    mean_s = 1.0 / (1.0 / service_matrix(snapshot, snapshot.models)).mean(axis=1) if snapshot.devices else []
    memory = sum(d.mem_bytes for d in snapshot.devices)
    need = [max(0.0, m.demand_per_s) * s / snapshot.rho for m, s in zip(snapshot.models, mean_s, strict=True)]
    all_demand = sum(m.mem_bytes * max(1, math.ceil(n)) for m, n in zip(snapshot.models, need, strict=True))
    return {
        "mem_one_each": sum(m.mem_bytes for m in snapshot.models) / memory,
        "mem_all_demand": all_demand / memory,
        "top_replicas": float(max(need, default=0.0)),
        "multi_replica_models": int(sum(n > 1.0 for n in need)),
        "offered_work": sum(n for n in need) / max(1, len(snapshot.devices)),
    }


def drifted(snapshot: Snapshot, placement: dict[str, tuple[str, ...]], *, seed: int, amount: float = 0.1) -> Snapshot:
    """Next round: every demand scaled by a uniform factor in [1 - amount, 1 + amount], `placement` is current."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0 - amount, 1.0 + amount, size=len(snapshot.models))
    models = tuple(
        dataclasses.replace(
            m,
            demand_per_s=m.demand_per_s * float(f),
            current=placement.get(m.name, ()),
            planned_demand_per_s=m.demand_per_s,
        )
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
    knobs.pop("family", None)
    return Snapshot(devices=devices, models=models, **knobs)


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    return dataclasses.asdict(snapshot)
