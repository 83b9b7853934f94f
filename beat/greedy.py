"""Greedy placements: the baselines the MILP is measured against, its first incumbents, and the fallback.

- `ffd_placement`: first-fit decreasing by memory, one replica per model, as Triton's model repository and
  ModelMesh place models: size decides, demand does not.
- `demand_greedy_placement`: what a careful engineer writes without a solver. Replicas go in order of the weighted
  demand they would serve per unit of what they use, each on the device where it serves the most (per-model
  service times per device class, `beat.pairs`), ties to the fullest card that fits (best fit, so small models do
  not fill the big cards a large model needs); when no replica can serve more, leftover memory still gets a
  replica of each model with unserved demand, so the routing LP can move time share to them.
  Two scores: demand per byte (memory binds) and demand per share of the fleet's memory and time together (GPU
  time binds, e.g. many small models).
- Both honour the host spread of `beat.problem`: a model's second replica goes on another host than its first
  when its eligible devices span two hosts (and the model is not pinned).
- `greedy_placements`: every greedy above by name; the solver and `bench.solver` take the best of them.
- `proportional_rates`: routing without an LP solver, for the fallback plan only.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable

import numpy as np

from beat.pairs import eligible_matrix, service_matrix, service_s
from beat.snapshot import ModelDemand, Snapshot

Placement = dict[str, tuple[str, ...]]

#: rates within this share of the best count as a tie, decided by best fit
TIE_TOLERANCE = 1e-6


class GreedyScore(enum.StrEnum):
    PER_BYTE = "per_byte"  # weighted demand served per byte of memory
    PER_RESOURCE = "per_resource"  # per share of the fleet's memory plus share of its GPU time


def _same_host_barred(snapshot: Snapshot, model: ModelDemand, allowed: np.ndarray, chosen: Iterable[int]) -> int | None:
    """The host index a next replica of ``model`` may not go on (all its replicas are there and it may go
    elsewhere), or None when any host will do."""
    chosen = list(chosen)
    if model.pinned or not chosen:
        return None
    hosts = [d.host for d in snapshot.devices]
    on = {hosts[g] for g in chosen}
    if len(on) > 1:
        return None
    (only,) = on
    elsewhere = any(allowed[g] and hosts[g] != only for g in range(len(hosts)))
    return chosen[0] if elsewhere else None


def ffd_placement(snapshot: Snapshot) -> Placement:
    """One replica per model (more if min_replicas says so), largest model first, on the first device it fits."""
    models = snapshot.models
    allowed = eligible_matrix(snapshot, models, service_matrix(snapshot, models))
    free = [d.mem_bytes for d in snapshot.devices]
    index = {d.id: g for g, d in enumerate(snapshot.devices)}
    placement: Placement = {}
    for i in sorted(range(len(models)), key=lambda i: (-models[i].mem_bytes, models[i].name)):
        model = models[i]
        chosen = [index[g] for g in model.pinned if g in index and free[index[g]] >= model.mem_bytes]
        for g in chosen:
            free[g] -= model.mem_bytes
        want = max(1, model.min_replicas)
        for g in range(len(free)):
            if len(chosen) >= want:
                break
            barred = _same_host_barred(snapshot, model, allowed[i], chosen)
            if barred is not None and snapshot.devices[g].host == snapshot.devices[barred].host:
                continue
            if g not in chosen and allowed[i, g] and free[g] >= model.mem_bytes:
                chosen.append(g)
                free[g] -= model.mem_bytes
        if chosen:
            placement[model.name] = tuple(snapshot.devices[g].id for g in chosen)
    return placement


class _Fill:
    """Free memory and free time share per device, and what each model still needs, while a greedy fills."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.models = snapshot.models
        self.ids = [d.id for d in snapshot.devices]
        self.index = {g: i for i, g in enumerate(self.ids)}
        self.service = service_matrix(snapshot, self.models)
        self.allowed = eligible_matrix(snapshot, self.models, self.service)
        self.free_mem = np.array([d.mem_bytes for d in snapshot.devices], dtype=float)
        self.free_time = np.full(len(self.ids), snapshot.rho)
        self.remaining = np.array([max(0.0, m.demand_per_s) for m in self.models], dtype=float)
        self.hosts: list[set[int]] = [set() for _ in self.models]
        names = sorted({d.host for d in snapshot.devices})
        self.device_host = np.array([names.index(d.host) for d in snapshot.devices], dtype=np.int64)

    def best_device(self, i: int, *, need_rate: bool) -> tuple[int, float]:
        """Where one more replica of model i serves the most, ties to the fullest card; (-1, 0) when none fits."""
        mem = self.models[i].mem_bytes
        fits = self.allowed[i] & (self.free_mem >= mem)
        for g in self.hosts[i]:
            fits[g] = False
        barred = _same_host_barred(self.snapshot, self.models[i], self.allowed[i], self.hosts[i])
        if barred is not None:
            fits &= self.device_host != self.device_host[barred]
        if not fits.any():
            return -1, 0.0
        rate = np.where(fits, np.minimum(self.remaining[i], self.free_time / self.service[i]), -1.0)
        best = float(rate.max())
        if need_rate and best <= 1e-9:
            return -1, 0.0
        ties = np.flatnonzero(rate >= best - TIE_TOLERANCE * max(best, 1e-12))
        if best <= 1e-9:
            ties = np.flatnonzero(fits)
        # Best fit: the card with least memory left after this replica; then the lowest index, for determinism.
        g = int(ties[np.argmin(self.free_mem[ties] - mem)])
        return g, float(max(rate[g], 0.0))

    def place(self, i: int, g: int, rate: float) -> None:
        self.free_mem[g] -= self.models[i].mem_bytes
        self.free_time[g] = max(0.0, self.free_time[g] - rate * self.service[i, g])
        self.remaining[i] = max(0.0, self.remaining[i] - rate)
        self.hosts[i].add(g)

    def can_add(self, i: int) -> bool:
        cap = self.models[i].max_replicas
        return cap is None or len(self.hosts[i]) < cap

    def placement(self) -> Placement:
        return {
            m.name: tuple(self.ids[g] for g in sorted(gs)) for m, gs in zip(self.models, self.hosts, strict=True) if gs
        }


def demand_greedy_placement(snapshot: Snapshot, score: GreedyScore = GreedyScore.PER_BYTE) -> Placement:
    """Pinned and min replicas first, then the best-scoring replica repeatedly, then leftover memory (see above)."""
    fill = _Fill(snapshot)
    _place_required(fill)

    total_mem = max(float(fill.free_mem.sum()), 1.0)
    total_time = max(float(snapshot.rho * len(fill.ids)), 1e-9)
    mean_service = fill.service.mean(axis=1) if fill.ids else np.ones(len(fill.models))

    def value(i: int, rate: float, service_s: float) -> float:
        m = fill.models[i]
        if score is GreedyScore.PER_BYTE:
            return m.weight * rate / max(m.mem_bytes, 1)
        used = m.mem_bytes / total_mem + rate * service_s / total_time
        return m.weight * rate / max(used, 1e-15)

    # Lazy greedy: a popped entry is re-scored; if it got worse than the next best, it goes back in the heap.
    heap = [(-value(i, fill.remaining[i], mean_service[i]), i) for i in range(len(fill.models))]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        if not fill.can_add(i):
            continue
        g, rate = fill.best_device(i, need_rate=True)
        if g < 0:
            continue
        current = value(i, rate, fill.service[i, g])
        if heap and current < -heap[0][0] - 1e-15:
            heapq.heappush(heap, (-current, i))
            continue
        fill.place(i, g, rate)
        if fill.remaining[i] > 1e-9:
            heapq.heappush(heap, (-value(i, fill.remaining[i], mean_service[i]), i))

    _fill_leftover_memory(fill)
    return fill.placement()


def _place_required(fill: _Fill) -> None:
    """Pinned replicas, then each model's min_replicas where it serves the most."""
    for i, m in enumerate(fill.models):
        for pin in m.pinned:
            g = fill.index.get(pin)
            if g is not None and g not in fill.hosts[i] and fill.free_mem[g] >= m.mem_bytes:
                fill.place(i, g, min(fill.remaining[i], fill.free_time[g] / fill.service[i, g]))
        while len(fill.hosts[i]) < m.min_replicas:
            g, rate = fill.best_device(i, need_rate=False)
            if g < 0:
                break
            fill.place(i, g, rate)


def _fill_leftover_memory(fill: _Fill) -> None:
    """A replica for each model with unserved demand while memory is left, busiest first, best fit.

    The greedy's own bookkeeping says they serve nothing (GPU time is taken), but the routing LP can give them
    time share that serves more elsewhere: a model with short requests serves more per GPU-second. Replicas the LP
    leaves idle are dropped again by the caller (`beat.solver`), so this costs nothing when it does not help.
    """
    order = sorted(
        (i for i in range(len(fill.models)) if fill.remaining[i] > 1e-9),
        key=lambda i: (-fill.models[i].weight * fill.remaining[i], fill.models[i].name),
    )
    for i in order:
        if not fill.can_add(i):
            continue
        g, rate = fill.best_device(i, need_rate=False)
        if g >= 0:
            fill.place(i, g, rate)


def greedy_placements(snapshot: Snapshot) -> dict[str, Placement]:
    """Every greedy baseline by name; the caller routes them and keeps the best."""
    found = {"ffd": ffd_placement(snapshot)}
    for score in GreedyScore:
        found[f"demand_{score}"] = demand_greedy_placement(snapshot, score)
    return found


def proportional_rates(snapshot: Snapshot, placement: Placement) -> dict[tuple[str, str], float]:
    """Routing without a solver: each device's time share is split among its replicas by their model's demand."""
    models: dict[str, ModelDemand] = {m.name: m for m in snapshot.models}
    by_id = {d.id: d for d in snapshot.devices}
    per_device: dict[str, list[str]] = {}
    for name, devices in placement.items():
        for g in devices:
            per_device.setdefault(g, []).append(name)
    rates: dict[tuple[str, str], float] = {}
    for g, names in per_device.items():
        wants = {n: max(0.0, models[n].demand_per_s) / len(placement[n]) for n in names}
        time_wanted = sum(wants[n] * service_s(models[n], by_id[g]) for n in names)
        scale = min(1.0, snapshot.rho / time_wanted) if time_wanted > 0 else 0.0
        for n in names:
            rates[(n, g)] = wants[n] * scale
    return rates
