"""The replica lifecycle as a pure state machine, and the statuses of the devices replicas live on.

A replica is one model version held by one worker on one device. Its states and the transitions allowed between
them live here and only here; the database layer calls :func:`check_transition` before every write.
"""

from __future__ import annotations

import enum

from app.errors import IllegalTransition


class ReplicaState(enum.StrEnum):
    PENDING = "PENDING"  # placed and a load message sent; the worker has not started yet
    LOADING = "LOADING"  # the worker is verifying the artifact and building the runtime session
    READY = "READY"  # loaded, and the worker consumes the model's queue
    DRAINING = "DRAINING"  # the worker stopped consuming; requests it already holds still finish
    UNLOADING = "UNLOADING"  # the runtime session is being released
    STOPPED = "STOPPED"  # memory returned; terminal
    FAILED = "FAILED"  # terminal, with a reason (bad artifact, worker lost, load error...)


#: Forward edges of the lifecycle. Any non-terminal state may also go to FAILED.
_FORWARD: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.PENDING: frozenset({ReplicaState.LOADING, ReplicaState.STOPPED}),
    ReplicaState.LOADING: frozenset({ReplicaState.READY}),
    ReplicaState.READY: frozenset({ReplicaState.DRAINING}),
    ReplicaState.DRAINING: frozenset({ReplicaState.UNLOADING}),
    ReplicaState.UNLOADING: frozenset({ReplicaState.STOPPED}),
    ReplicaState.STOPPED: frozenset(),
    ReplicaState.FAILED: frozenset(),
}

#: States that end a replica's life; a new load makes a new replica.
TERMINAL: frozenset[ReplicaState] = frozenset({ReplicaState.STOPPED, ReplicaState.FAILED})

#: States in which a replica holds (or is about to hold) device memory, for placement arithmetic.
HOLDS_MEMORY: frozenset[ReplicaState] = frozenset(
    {ReplicaState.PENDING, ReplicaState.LOADING, ReplicaState.READY, ReplicaState.DRAINING, ReplicaState.UNLOADING}
)


def allowed(src: ReplicaState, dst: ReplicaState) -> bool:
    """True when a replica may move from ``src`` to ``dst``."""
    if dst is ReplicaState.FAILED:
        return src not in TERMINAL
    return dst in _FORWARD[src]


def check_transition(src: ReplicaState, dst: ReplicaState, *, replica: str = "") -> None:
    """Raise IllegalTransition unless ``src -> dst`` is allowed."""
    if not allowed(src, dst):
        who = f"replica {replica}: " if replica else ""
        raise IllegalTransition(f"{who}{src.value} -> {dst.value} is not a legal lifecycle transition")


class DeviceStatus(enum.StrEnum):
    """What a device row says about its worker; only an ONLINE device with a fresh heartbeat is alive."""

    ONLINE = "online"  # the worker registered and sends heartbeats (a stale heartbeat makes it silent, not lost)
    OFFLINE = "offline"  # the worker shut down cleanly
    LOST = "lost"  # the reaper found its heartbeat too old and failed its replicas
