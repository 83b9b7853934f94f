"""Greedy baselines: first-fit decreasing and demand per GB."""

from __future__ import annotations

import pytest

from beat.fleetgen import GB, generate_fleet
from beat.greedy import demand_greedy_placement, ffd_placement, proportional_rates
from beat.snapshot import Device, ModelDemand, Snapshot


def mem_ok(snapshot: Snapshot, placement: dict[str, tuple[str, ...]]) -> bool:
    mem = {m.name: m.mem_bytes for m in snapshot.models}
    used = {d.id: 0 for d in snapshot.devices}
    for name, devs in placement.items():
        for g in devs:
            used[g] += mem[name]
    return all(used[d.id] <= d.mem_bytes for d in snapshot.devices)


@pytest.mark.parametrize(
    ("sizes_gb", "caps_gb", "expect"),
    [
        # largest first, each on the first device it fits
        ((10, 30, 20), (40, 40), {"m0": ("g0",), "m1": ("g0",), "m2": ("g1",)}),
        ((50, 10), (40, 80), {"m0": ("g1",), "m1": ("g0",)}),
        ((30, 30, 30), (40, 40), {"m0": ("g0",), "m1": ("g1",)}),  # the last one does not fit anywhere
    ],
)
def test_ffd(sizes_gb, caps_gb, expect) -> None:
    devices = tuple(Device(f"g{i}", c * GB) for i, c in enumerate(caps_gb))
    models = tuple(ModelDemand(f"m{i}", s * GB, 1.0, 0.1) for i, s in enumerate(sizes_gb))
    assert ffd_placement(Snapshot(devices=devices, models=models)) == expect


def test_demand_greedy_prefers_demand_per_gb() -> None:
    devices = (Device("g0", 40 * GB),)
    models = (
        ModelDemand("big_busy", 30 * GB, 10.0, 0.01),  # 0.33 req/s per GB
        ModelDemand("small_busy", 10 * GB, 8.0, 0.01),  # 0.8 req/s per GB
        ModelDemand("small_idle", 10 * GB, 0.1, 0.01),
    )
    placement = demand_greedy_placement(Snapshot(devices=devices, models=models))
    assert set(placement) == {"big_busy", "small_busy"}


def test_demand_greedy_adds_replicas_for_popular_models() -> None:
    devices = tuple(Device(f"g{i}", 40 * GB) for i in range(3))
    models = (ModelDemand("hot", 10 * GB, 25.0, 0.1), ModelDemand("cold", 10 * GB, 1.0, 0.1))
    placement = demand_greedy_placement(Snapshot(devices=devices, models=models))
    assert len(placement["hot"]) == 3  # one replica serves 9 req/s at rho 0.9


@pytest.mark.parametrize("seed", range(3))
def test_greedy_placements_fit_memory(seed: int) -> None:
    snapshot = generate_fleet(80, 8, seed=seed)
    for placement in (ffd_placement(snapshot), demand_greedy_placement(snapshot)):
        assert mem_ok(snapshot, placement)
        rates = proportional_rates(snapshot, placement)
        assert all(r >= 0 for r in rates.values())


def test_pinned_and_min_replicas_honoured_by_demand_greedy() -> None:
    devices = tuple(Device(f"g{i}", 40 * GB) for i in range(3))
    models = (ModelDemand("a", 10 * GB, 0.0, 0.1, pinned=("g2",), min_replicas=2),)
    placement = demand_greedy_placement(Snapshot(devices=devices, models=models))
    assert "g2" in placement["a"] and len(placement["a"]) == 2
