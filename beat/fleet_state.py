"""Reading the fleet into the solver's snapshot: devices, models, demand, placement. The database and Redis edge.

Per model the allocator manages the version a bare reference resolves to (the ``prod`` alias, else the newest).
Demand is the arrival-rate EWMA plus what it takes to drain the current backlog within one period; memory is
the largest footprint measured on a loaded replica of that version, else the declared figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app import registry
from app.allocation_states import RunStatus
from app.broker import demand as demand_records
from app.broker.layout import model_queue
from app.broker.queues import depths
from app.db import devices as device_rows
from app.db import replicas as replica_rows
from app.db.schema import AllocationRun, Model
from app.errors import DatabaseUnavailable
from app.lifecycle import HOLDS_MEMORY, ReplicaState
from app.service_time import device_class
from app.settings import Settings
from beat.snapshot import Device, ModelDemand, Snapshot

#: Seconds a load is assumed to take until one is measured; prices a move in the objective.
DEFAULT_LOAD_S = 10.0


@dataclass
class FleetState:
    snapshot: Snapshot
    version_ids: dict[str, int]  # model -> the version the allocator places
    mem_bytes: dict[str, int]
    capacity_bytes: dict[str, int]  # device memory less what unmanaged replicas hold
    min_replicas: dict[str, int]
    demand: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> rate, backlog, demand


def read(session: Session, client: redis.Redis, settings: Settings, now: float | None = None) -> FleetState:
    """The fleet as the solver sees it now; DatabaseUnavailable (the driver's error chained) if it cannot be read."""
    try:
        return _read(session, client, settings, time.time() if now is None else now)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"cannot read the fleet state from the database: {exc}") from exc


#: runs that moved replicas: their demand is what the current placement was planned for. Not KEPT runs: they
#: moved nothing, and reading their demand would let a slow drift (under the change share each run) never count
_CARRIED_OUT = (RunStatus.EXECUTING, RunStatus.DONE, RunStatus.DONE_WITH_FAILURES)


def planned_demands(session: Session) -> dict[str, float]:
    """Per model, the demand the last allocation run that moved replicas planned for (its recorded input); the solver
    charges switching only for models whose demand has not moved since (`Snapshot.switch_cost_share`)."""
    run = session.scalars(
        select(AllocationRun).where(AllocationRun.status.in_(_CARRIED_OUT)).order_by(AllocationRun.id.desc()).limit(1)
    ).first()
    if run is None or not isinstance(run.inputs, dict):
        return {}
    demand = run.inputs.get("demand") or {}
    return {
        name: float(row["demand_per_s"])
        for name, row in demand.items()
        if isinstance(row, dict) and isinstance(row.get("demand_per_s"), int | float)
    }


def _read(session: Session, client: redis.Redis, settings: Settings, now: float) -> FleetState:
    alive = [d for d in device_rows.all_devices(session) if device_rows.is_alive(d, settings.heartbeat_timeout_s)]
    names = {d.id: d.worker_name for d in alive}
    classes = sorted({device_class(d.kind, d.name) for d in alive}) or ["virtual"]
    rates = demand_records.update_rates(client, settings.rate_half_life_s, now)
    last_arrival = demand_records.last_arrivals(client)
    # A model without versions is not placeable; asking resolve() for one would only raise UnknownVersion.
    models = list(session.scalars(select(Model).where(Model.versions.any()).order_by(Model.name)))
    planned = planned_demands(session)
    backlog = depths(client, [model_queue(m.name) for m in models]) if models else {}
    footprints = replica_rows.measured_footprints(session)
    used_unmanaged = {d.id: 0 for d in alive}
    state = FleetState(Snapshot((), ()), {}, {}, {}, {})
    demands = []
    for model in models:
        version = registry.resolve(session, model.name)
        live = replica_rows.live_for_model(session, model.id)
        current = tuple(
            sorted(
                names[r.device_id]
                for r in live
                if r.version_id == version.id
                and r.device_id in names
                and ReplicaState(r.state) in (ReplicaState.PENDING, ReplicaState.LOADING, ReplicaState.READY)
            )
        )
        for r in live:
            # Memory the solver does not place: other versions, and replicas already on their way out.
            replica_state = ReplicaState(r.state)
            leaving = replica_state in (ReplicaState.DRAINING, ReplicaState.UNLOADING)
            unmanaged = r.version_id != version.id or leaving
            if r.device_id in used_unmanaged and unmanaged and replica_state in HOLDS_MEMORY:
                used_unmanaged[r.device_id] += replica_rows.held_bytes(r, footprints)
        rate, waiting = rates.get(model.name, 0.0), backlog.get(model_queue(model.name), 0)
        demand = rate + waiting / settings.allocation_period_s
        recently_used = now - last_arrival.get(model.name, 0.0) < settings.idle_unload_s
        keep = 1 if (model.keep_warm or (current and recently_used)) else 0
        min_rep = max(model.min_replicas, keep)
        if not (demand > 0 or current or min_rep or model.pinned):
            continue
        declared_s = version.service_ms / 1000
        est = demand_records.estimator(client, model.name, declared_s, classes)
        # Per class where the fleet has measured it; the declared figure (scaled by device speed) elsewhere.
        by_class = {c: est.estimate((model.name, c), 1.0) for c in classes if est.observations((model.name, c)) > 0}
        mem = footprints.get(version.id) or version.mem_bytes
        pinned = tuple(w for w in model.pinned if w in names.values())
        demands.append(
            ModelDemand(
                name=model.name,
                mem_bytes=mem,
                demand_per_s=demand,
                service_s=max(declared_s, 1e-4),
                service_s_by_class={c: max(s, 1e-4) for c, s in by_class.items()},
                p99_ms=model.p99_ms,
                min_replicas=min(min_rep, len(alive)),
                max_replicas=model.max_replicas,
                pinned=pinned,
                current=current,
                planned_demand_per_s=planned.get(model.name) if current else None,
                load_cost_s=DEFAULT_LOAD_S,
            )
        )
        state.version_ids[model.name], state.mem_bytes[model.name] = version.id, mem
        state.min_replicas[model.name] = min_rep
        state.demand[model.name] = {"rate_per_s": round(rate, 3), "waiting": waiting, "demand_per_s": round(demand, 3)}
    devices = tuple(
        Device(
            d.worker_name,
            max(0, d.mem_bytes - used_unmanaged[d.id]),
            d.speed,
            "virtual" if d.kind == "virtual" else "gpu",
            device_class(d.kind, d.name),
            d.host,
        )
        for d in alive
    )
    state.capacity_bytes = {d.id: d.mem_bytes for d in devices}
    state.snapshot = Snapshot(devices, tuple(demands), time_limit_s=settings.solver_time_limit_s)
    return state
