"""Which models go into the MILP, on which candidate devices, and whether the fairness term applies.

Pure: a snapshot in, indexes out. Pruning is what makes large fleets solvable on a beat period: the full
500 x 64 MILP's root LP alone does not finish in 10 s on 2 cores, while a few candidates per model keep the
loss under 0.5%. Candidates are spread over the eligible devices in proportion to their memory: ranking them by
speed instead sent every model to the largest cards and lost 14-21% of served demand.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from beat.greedy import ffd_placement
from beat.pairs import eligible, eligible_matrix, meets_slo, service_matrix, slo_reason
from beat.snapshot import ModelDemand, Snapshot

#: candidate devices per model before adding room for the replicas its demand needs
BASE_CANDIDATES = 6
#: golden-ratio step: successive models start their memory-proportional walk at well-spread offsets
_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def screen_models(snapshot: Snapshot) -> tuple[tuple[ModelDemand, ...], list[tuple[str, str]]]:
    """Split models into solvable ones and (name, reason) for those no placement can hold."""
    caps = {d.id: d.mem_bytes for d in snapshot.devices}
    largest = max(caps.values(), default=0)
    ok: list[ModelDemand] = []
    bad: list[tuple[str, str]] = []
    for m in snapshot.models:
        reason = _reason_unplaceable(m, caps, largest) or _reason_too_slow(m, snapshot)
        if reason:
            bad.append((m.name, reason))
        else:
            ok.append(m)
    return tuple(ok), bad


def _reason_unplaceable(m: ModelDemand, caps: dict[str, int], largest: int) -> str:
    gb = 1e9
    if m.service_s <= 0:
        return f"service_s must be positive, got {m.service_s}"
    if m.mem_bytes > largest:
        return f"needs {m.mem_bytes / gb:.1f} GB, the largest device has {largest / gb:.1f} GB"
    unknown = [g for g in m.pinned if g not in caps]
    if unknown:
        return f"pinned to unknown device(s) {', '.join(unknown)}"
    small = [g for g in m.pinned if caps[g] < m.mem_bytes]
    if small:
        return f"pinned to device(s) {', '.join(small)} smaller than its {m.mem_bytes / gb:.1f} GB"
    if m.max_replicas is not None and len(set(m.pinned)) > m.max_replicas:
        return f"pinned to {len(set(m.pinned))} devices but max_replicas is {m.max_replicas}"
    fitting = sum(1 for c in caps.values() if c >= m.mem_bytes)
    if m.min_replicas > fitting:
        return f"min_replicas {m.min_replicas} but only {fitting} device(s) can hold it"
    if m.max_replicas is not None and m.min_replicas > m.max_replicas:
        return f"min_replicas {m.min_replicas} exceeds max_replicas {m.max_replicas}"
    return ""


def _reason_too_slow(m: ModelDemand, snapshot: Snapshot) -> str:
    """A latency objective that no device (that fits, and any pinned one) can meet, named with the times seen."""
    if m.p99_ms is None:
        return ""
    by_id = {d.id: d for d in snapshot.devices}
    slow_pins = [g for g in m.pinned if not meets_slo(m, by_id[g])]
    if slow_pins:
        return f"pinned to device(s) {', '.join(slow_pins)} that cannot meet it: " + slo_reason(m, snapshot.devices)
    if not any(eligible(m, d) for d in snapshot.devices):
        return slo_reason(m, snapshot.devices)
    fitting = sum(1 for d in snapshot.devices if eligible(m, d))
    if m.min_replicas > fitting:
        return f"min_replicas {m.min_replicas} but only {fitting} device(s) meet its {m.p99_ms:g} ms objective"
    return ""


def fairness_applies(snapshot: Snapshot, models: tuple[ModelDemand, ...]) -> bool:
    """True when every model's demand fits in memory: the replicas it needs, packed first-fit decreasing.

    Otherwise some model ends up short or without a replica, so the max-min share t is pinned near 0 in any
    integer solution, while the LP relaxation spreads slivers of x to give every model a share and t close to 1.
    The term then only inflates the bound (by about theta, 5%, on contended fleets) and steers the LP fixing
    wrong, so it is dropped. FFD may miss a packing that exists; that errs towards dropping the term.
    """
    mean_speed = sum(d.speed for d in snapshot.devices) / max(1, len(snapshot.devices))
    wanted = tuple(
        replace(m, min_replicas=max(1, m.min_replicas, _replicas_needed(m, snapshot.rho, mean_speed)), pinned=())
        for m in models
        if m.demand_per_s > 0
    )
    total = sum(m.mem_bytes * m.min_replicas for m in wanted)
    if total > sum(d.mem_bytes for d in snapshot.devices):
        return False
    placed = ffd_placement(Snapshot(devices=snapshot.devices, models=wanted))
    return all(len(placed.get(m.name, ())) >= m.min_replicas for m in wanted)


def _replicas_needed(m: ModelDemand, rho: float, speed: float) -> int:
    """Replicas of average speed that serve all of the model's demand."""
    return math.ceil(max(0.0, m.demand_per_s) * m.service_s / (rho * speed))


def all_pairs(snapshot: Snapshot, models: tuple[ModelDemand, ...]) -> np.ndarray:
    """Every (model index, device index) whose memory fits and that meets the latency objective: the exact problem."""
    mi, gi = np.nonzero(eligible_matrix(snapshot, models, service_matrix(snapshot, models)))
    return np.stack([mi, gi], axis=1)


def candidate_pairs(
    snapshot: Snapshot,
    models: tuple[ModelDemand, ...],
    base: int = BASE_CANDIDATES,
    also: dict[str, tuple[str, ...]] | None = None,
) -> np.ndarray:
    """A few devices per model, spread over the devices it fits on in proportion to their memory.

    A model whose demand needs k replicas gets about 2k + 2 candidates; its current and pinned devices are always
    candidates, so keeping the current placement stays feasible (it is the solver's incumbent); so are the devices
    `also` lists per model (the greedy incumbent).
    """
    caps = np.array([d.mem_bytes for d in snapshot.devices], dtype=float)
    speeds = np.array([d.speed for d in snapshot.devices], dtype=float)
    index = {d.id: i for i, d in enumerate(snapshot.devices)}
    # A fixed shuffle interleaves card types, so a model's stratified walk crosses all of them.
    order = np.random.default_rng(0).permutation(len(caps))
    mean_speed = float(speeds.mean()) if speeds.size else 1.0
    also = also or {}
    allowed = eligible_matrix(snapshot, models, service_matrix(snapshot, models))
    chunks = []
    for i, m in enumerate(models):
        fits_on = order[allowed[i, order]]
        need = _replicas_needed(m, snapshot.rho, mean_speed)
        k = max(base, 2 * need + 2, m.min_replicas + 2)
        if fits_on.size <= k:
            chosen = fits_on
        else:
            cum = np.cumsum(caps[fits_on])
            points = (((i * _PHI) % 1.0 + np.arange(k)) / k) * cum[-1]
            chosen = fits_on[np.minimum(np.searchsorted(cum, points, side="right"), fits_on.size - 1)]
        extra = [
            index[g] for g in (*m.current, *m.pinned, *also.get(m.name, ())) if g in index and allowed[i, index[g]]
        ]
        devs = np.unique(np.concatenate([chosen, np.array(extra, dtype=np.int64)]).astype(np.int64))
        chunks.append(np.stack([np.full(devs.size, i), devs], axis=1))
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(chunks)
