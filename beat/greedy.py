"""Greedy placements: the baselines the MILP is measured against, and the fallback when no solver answers.

- `ffd_placement`: first-fit decreasing by memory, one replica per model, as Triton's model repository and
  ModelMesh place models: size decides, demand does not.
- `demand_greedy_placement`: replicas in order of weighted demand they would serve per byte of memory, each on the
  device where it can serve the most.
- `proportional_rates`: routing without an LP solver, for the fallback plan only.
"""

from __future__ import annotations

import heapq

import numpy as np

from beat.snapshot import Snapshot

Placement = dict[str, tuple[str, ...]]


def ffd_placement(snapshot: Snapshot) -> Placement:
    """One replica per model (more if min_replicas says so), largest model first, on the first device it fits."""
    free = {d.id: d.mem_bytes for d in snapshot.devices}
    placement: Placement = {}
    for model in sorted(snapshot.models, key=lambda m: (-m.mem_bytes, m.name)):
        chosen = [g for g in model.pinned if g in free and free[g] >= model.mem_bytes]
        for g in chosen:
            free[g] -= model.mem_bytes
        want = max(1, model.min_replicas)
        for device in snapshot.devices:
            if len(chosen) >= want:
                break
            if device.id not in chosen and free[device.id] >= model.mem_bytes:
                chosen.append(device.id)
                free[device.id] -= model.mem_bytes
        if chosen:
            placement[model.name] = tuple(chosen)
    return placement


class _Fleet:
    """Free memory and free time share per device while the demand greedy fills the fleet."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.ids = [d.id for d in snapshot.devices]
        self.index = {g: i for i, g in enumerate(self.ids)}
        self.speed = np.array([d.speed for d in snapshot.devices], dtype=float)
        self.free_mem = np.array([d.mem_bytes for d in snapshot.devices], dtype=float)
        self.free_time = np.full(len(self.ids), snapshot.rho)
        self.hosts: dict[str, set[int]] = {}

    def best_device(self, name: str, mem: float, service_s: float, remaining: float) -> tuple[int, float]:
        """The device where one more replica serves the most, and that rate; (-1, 0) when none fits."""
        fits = self.free_mem >= mem
        for g in self.hosts.get(name, ()):
            fits[g] = False
        if not fits.any():
            return -1, 0.0
        rate = np.where(fits, np.minimum(remaining, self.free_time * self.speed / service_s), -1.0)
        g = int(np.argmax(rate))
        return g, float(rate[g])

    def place(self, name: str, g: int, mem: float, service_s: float, rate: float) -> None:
        self.free_mem[g] -= mem
        self.free_time[g] -= rate * service_s / self.speed[g]
        self.hosts.setdefault(name, set()).add(g)


def demand_greedy_placement(snapshot: Snapshot) -> Placement:
    """Pinned and min replicas first, then the replica with the most weighted demand served per byte, repeatedly."""
    fleet = _Fleet(snapshot)
    models = {m.name: m for m in snapshot.models}
    remaining = {m.name: max(0.0, m.demand_per_s) for m in snapshot.models}
    for m in snapshot.models:
        for pin in m.pinned:
            if pin in fleet.index and fleet.free_mem[fleet.index[pin]] >= m.mem_bytes:
                gi = fleet.index[pin]
                rate = min(remaining[m.name], fleet.free_time[gi] * fleet.speed[gi] / m.service_s)
                fleet.place(m.name, gi, m.mem_bytes, m.service_s, rate)
                remaining[m.name] -= rate
        while len(fleet.hosts.get(m.name, ())) < m.min_replicas:
            g, rate = fleet.best_device(m.name, m.mem_bytes, m.service_s, remaining[m.name])
            if g < 0:
                break
            fleet.place(m.name, g, m.mem_bytes, m.service_s, rate)
            remaining[m.name] -= rate

    # Lazy greedy: a popped entry is re-scored; if it got worse than the next best, it goes back in the heap.
    heap = [(-m.weight * remaining[m.name] / max(m.mem_bytes, 1), m.name) for m in snapshot.models]
    heapq.heapify(heap)
    while heap:
        neg_score, name = heapq.heappop(heap)
        m = models[name]
        count = len(fleet.hosts.get(name, ()))
        if m.max_replicas is not None and count >= m.max_replicas:
            continue
        g, rate = fleet.best_device(name, m.mem_bytes, m.service_s, remaining[name])
        if g < 0 or rate <= 1e-9:
            continue
        score = m.weight * rate / max(m.mem_bytes, 1)
        if heap and score < -heap[0][0] - 1e-15:
            heapq.heappush(heap, (-score, name))
            continue
        fleet.place(name, g, m.mem_bytes, m.service_s, rate)
        remaining[name] -= rate
        heapq.heappush(heap, (-m.weight * remaining[name] / max(m.mem_bytes, 1), name))
    return {name: tuple(fleet.ids[g] for g in sorted(gs)) for name, gs in fleet.hosts.items() if gs}


def proportional_rates(snapshot: Snapshot, placement: Placement) -> dict[tuple[str, str], float]:
    """Routing without a solver: each device's time share is split among its replicas by their model's demand."""
    speed = {d.id: d.speed for d in snapshot.devices}
    models = {m.name: m for m in snapshot.models}
    per_device: dict[str, list[str]] = {}
    for name, devices in placement.items():
        for g in devices:
            per_device.setdefault(g, []).append(name)
    rates: dict[tuple[str, str], float] = {}
    for g, names in per_device.items():
        wants = {n: max(0.0, models[n].demand_per_s) / len(placement[n]) for n in names}
        time_wanted = sum(wants[n] * models[n].service_s / speed[g] for n in names)
        scale = min(1.0, snapshot.rho / time_wanted) if time_wanted > 0 else 0.0
        for n in names:
            rates[(n, g)] = wants[n] * scale
    return rates
