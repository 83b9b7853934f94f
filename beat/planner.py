"""Current placement + target placement -> ordered load/unload moves, make-before-break. Pure.

Rules, per model: its loads come first and its unloads wait for them (`after` holds the indexes of the moves that
must be READY before a move starts), so a model never drops below the replicas it needs while it moves. Across
models, a load waits for the unloads on its device that free the memory it needs. When those two rules deadlock
(A and B swap two full devices), an unload that still leaves its model enough READY replicas goes early; only if
there is none does a model go short for a while, and that move says so (`short=True`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class MoveKind(enum.StrEnum):
    LOAD = "load"  # start a new replica; READY once the worker reports the model loaded
    UNLOAD = "unload"  # drop a replica; done once its memory is free


@dataclass(frozen=True)
class Move:
    kind: MoveKind
    model: str
    device: str
    #: indexes (into the move list) of moves that must be done before this one starts
    after: tuple[int, ...] = ()
    #: this unload leaves the model with fewer replicas than it needs until its loads are READY
    short: bool = False


class PlanningError(ValueError):
    """Raised when the target placement cannot be reached: a load never fits, even after every unload."""


def plan_moves(
    current: Mapping[str, tuple[str, ...]],
    target: Mapping[str, tuple[str, ...]],
    *,
    mem_bytes: Mapping[str, int],
    capacity_bytes: Mapping[str, int],
    min_replicas: Mapping[str, int] | None = None,
) -> list[Move]:
    """Ordered moves from `current` to `target`; the list order is itself a valid serial order.

    A model needs max(min_replicas, 1) replicas while it has any in the target (no downtime), 0 when it leaves.
    """
    state = _State(current, mem_bytes, capacity_bytes)
    loads = {(m, g) for m, devs in target.items() for g in devs if g not in current.get(m, ())}
    unloads = {(m, g) for m, devs in current.items() for g in devs if g not in target.get(m, ())}
    need = {m: (max((min_replicas or {}).get(m, 0), 1) if target.get(m) else 0) for m in set(current) | set(target)}
    for m, g in sorted(loads):
        if mem_bytes[m] > capacity_bytes[g]:
            raise PlanningError(f"model {m} ({mem_bytes[m]} bytes) can never fit on device {g}")

    while loads or unloads:
        progressed = state.emit_fitting_loads(loads)
        progressed |= state.emit_unloads(unloads, waiting={m for m, _ in loads})
        if progressed:
            continue
        blocked = {g for _, g in loads}
        # Deadlock: free memory on a blocked device, first with an unload its model can spare, else any.
        early = sorted(u for u in unloads if u[1] in blocked and state.spare(u[0]) > need.get(u[0], 0))
        forced = sorted(u for u in unloads if u[1] in blocked)
        pick = early[:1] or forced[:1]
        if not pick:
            raise PlanningError(f"loads {sorted(loads)} do not fit even after every unload")
        state.emit_unload(pick[0], short=not early)
        unloads.discard(pick[0])
    return state.moves


class _State:
    """Free memory and emitted moves while the plan is built."""

    def __init__(
        self, current: Mapping[str, tuple[str, ...]], mem: Mapping[str, int], capacity: Mapping[str, int]
    ) -> None:
        self.mem = mem
        self.free = dict(capacity)
        self.replicas = {m: len(devs) for m, devs in current.items()}
        for m, devs in current.items():
            for g in devs:
                self.free[g] -= mem[m]
        self.moves: list[Move] = []
        self.loads_of: dict[str, list[int]] = {}
        self.unloads_on: dict[str, list[int]] = {}

    def spare(self, model: str) -> int:
        """Replicas the model is sure to have once the moves so far are done."""
        return self.replicas.get(model, 0)

    def emit_fitting_loads(self, loads: set[tuple[str, str]]) -> bool:
        fitting = sorted((m, g) for m, g in loads if self.free[g] >= self.mem[m])
        emitted = False
        for m, g in fitting:
            if self.free[g] < self.mem[m]:
                continue  # an earlier load in this pass took the room
            # Conservative: wait for every unload emitted on this device, the memory may be theirs.
            self.moves.append(Move(MoveKind.LOAD, m, g, after=tuple(self.unloads_on.get(g, ()))))
            self.loads_of.setdefault(m, []).append(len(self.moves) - 1)
            self.free[g] -= self.mem[m]
            self.replicas[m] = self.replicas.get(m, 0) + 1
            loads.discard((m, g))
            emitted = True
        return emitted

    def emit_unloads(self, unloads: set[tuple[str, str]], waiting: set[str]) -> bool:
        """Unloads of models with no load left to emit: make-before-break, after all of that model's loads."""
        emitted = False
        for move in sorted(u for u in unloads if u[0] not in waiting):
            self.emit_unload(move, short=False)
            unloads.discard(move)
            emitted = True
        return emitted

    def emit_unload(self, move: tuple[str, str], *, short: bool) -> None:
        m, g = move
        self.moves.append(Move(MoveKind.UNLOAD, m, g, after=tuple(self.loads_of.get(m, ())), short=short))
        self.unloads_on.setdefault(g, []).append(len(self.moves) - 1)
        self.free[g] += self.mem[m]
        self.replicas[m] -= 1
