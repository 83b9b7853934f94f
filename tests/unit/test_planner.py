"""Planner: make-before-break ordering, memory respected at every step, deadlocks broken."""

from __future__ import annotations

import pytest

from beat.planner import Move, MoveKind, PlanningError, plan_moves

GB = 10**9


def replay(moves: list[Move], current, mem, capacity, need) -> None:
    """Run the moves in list order, checking dependencies point backwards, memory and replica counts."""
    placed = {m: set(devs) for m, devs in current.items()}
    used = {g: 0 for g in capacity}
    for m, devs in current.items():
        for g in devs:
            used[g] += mem[m]
    for i, move in enumerate(moves):
        assert all(j < i for j in move.after)
        if move.kind is MoveKind.LOAD:
            used[move.device] += mem[move.model]
            assert used[move.device] <= capacity[move.device], f"move {i} overfills {move.device}"
            placed.setdefault(move.model, set()).add(move.device)
        else:
            placed[move.model].discard(move.device)
            used[move.device] -= mem[move.model]
            if not move.short:
                assert len(placed[move.model]) >= need.get(move.model, 0)


CASES = {
    # name: (current, target, mem GB, capacity GB)
    "move one replica": ({"a": ("g0",)}, {"a": ("g1",)}, {"a": 10}, {"g0": 40, "g1": 40}),
    "add a replica": ({"a": ("g0",)}, {"a": ("g0", "g1")}, {"a": 10}, {"g0": 40, "g1": 40}),
    "retire a model": ({"a": ("g0",)}, {}, {"a": 10}, {"g0": 40}),
    "make room for another model": (
        {"a": ("g0",), "b": ("g1",)},
        {"a": ("g1",), "b": ()},
        {"a": 30, "b": 30},
        {"g0": 40, "g1": 40},
    ),
    "swap two full devices": (
        {"a": ("g0",), "b": ("g1",)},
        {"a": ("g1",), "b": ("g0",)},
        {"a": 30, "b": 30},
        {"g0": 40, "g1": 40},
    ),
    "swap with a spare replica": (
        {"a": ("g0", "g2"), "b": ("g1",)},
        {"a": ("g1", "g2"), "b": ("g0",)},
        {"a": 30, "b": 30},
        {"g0": 40, "g1": 40, "g2": 40},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_moves_reach_target_safely(name: str) -> None:
    current, target, mem_gb, cap_gb = CASES[name]
    mem = {m: v * GB for m, v in mem_gb.items()}
    capacity = {g: v * GB for g, v in cap_gb.items()}
    need = {m: 1 for m, devs in target.items() if devs}
    moves = plan_moves(current, target, mem_bytes=mem, capacity_bytes=capacity)
    replay(moves, current, mem, capacity, need)
    final = {m: set(devs) for m, devs in current.items()}
    for move in moves:
        (final.setdefault(move.model, set()).add if move.kind is MoveKind.LOAD else final[move.model].discard)(
            move.device
        )
    assert {m: d for m, d in final.items() if d} == {m: set(d) for m, d in target.items() if d}


def test_unload_waits_for_the_models_load() -> None:
    moves = plan_moves({"a": ("g0",)}, {"a": ("g1",)}, mem_bytes={"a": 1}, capacity_bytes={"g0": 2, "g1": 2})
    assert moves == [Move(MoveKind.LOAD, "a", "g1"), Move(MoveKind.UNLOAD, "a", "g0", after=(0,))]


def test_load_waits_for_the_unload_that_frees_its_memory() -> None:
    moves = plan_moves(
        {"a": ("g0",), "b": ("g1",)},
        {"a": ("g1",)},
        mem_bytes={"a": 3, "b": 3},
        capacity_bytes={"g0": 4, "g1": 4},
    )
    assert moves == [Move(MoveKind.UNLOAD, "b", "g1"), Move(MoveKind.LOAD, "a", "g1", after=(0,)),
                     Move(MoveKind.UNLOAD, "a", "g0", after=(1,))]  # fmt: skip


def test_swap_prefers_an_unload_the_model_can_spare() -> None:
    current, target, mem_gb, cap_gb = CASES["swap with a spare replica"]
    moves = plan_moves(
        current,
        target,
        mem_bytes={m: v * GB for m, v in mem_gb.items()},
        capacity_bytes={g: v * GB for g, v in cap_gb.items()},
    )
    assert not any(m.short for m in moves)
    assert moves[0] == Move(MoveKind.UNLOAD, "a", "g0")


def test_swap_without_spare_goes_short_and_says_so() -> None:
    current, target, mem_gb, cap_gb = CASES["swap two full devices"]
    moves = plan_moves(
        current,
        target,
        mem_bytes={m: v * GB for m, v in mem_gb.items()},
        capacity_bytes={g: v * GB for g, v in cap_gb.items()},
    )
    assert sum(m.short for m in moves) == 1


def test_min_replicas_keeps_extra_replicas_until_loads_are_ready() -> None:
    moves = plan_moves(
        {"a": ("g0", "g1")},
        {"a": ("g2", "g3")},
        mem_bytes={"a": 1},
        capacity_bytes={g: 1 for g in ("g0", "g1", "g2", "g3")},
        min_replicas={"a": 2},
    )
    loads = [i for i, m in enumerate(moves) if m.kind is MoveKind.LOAD]
    for move in moves:
        if move.kind is MoveKind.UNLOAD:
            assert set(loads) <= set(move.after)


def test_load_that_never_fits_raises() -> None:
    with pytest.raises(PlanningError, match="never fit"):
        plan_moves({}, {"a": ("g0",)}, mem_bytes={"a": 5}, capacity_bytes={"g0": 4})


def test_target_over_memory_raises() -> None:
    with pytest.raises(PlanningError):
        plan_moves({}, {"a": ("g0",), "b": ("g0",)}, mem_bytes={"a": 3, "b": 3}, capacity_bytes={"g0": 4})
