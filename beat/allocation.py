"""The allocation loop beat drives: re-solve the placement, then carry out the moves, make-before-break.

Each run is short (it never waits for a load): it advances the moves of the run in progress, or, when none is in
progress, solves a new placement and records it as an ``allocation_run``. A move starts only once the moves it
depends on are done (loads READY before the unloads they replace), so one run is carried out over several
periods. A Redis lock keeps two runs from overlapping. Each run also reconciles what workers actually consume
with the database, because control messages on Redis are at most once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import logs, registry
from app.allocation_states import MoveState, RunStatus
from app.broker.clients import for_settings
from app.broker.keys import ALLOCATION_LOCK
from app.broker.layout import model_queue
from app.celery_app import settings_of
from app.control import Control
from app.db import devices as device_rows
from app.db import replicas as replica_rows
from app.db.schema import AllocationRun, Replica, utcnow
from app.db.session import session_scope
from app.errors import MaasError
from app.lifecycle import ReplicaState
from app.settings import Settings
from beat import fleet_state, pairs
from beat.planner import MoveKind, PlanningError, plan_moves
from beat.snapshot import Device, PlanStatus, Snapshot
from beat.solver import solve

log = logging.getLogger("maas.beat")
S = ReplicaState


def allocate(app: Celery, *, dry_run: bool = False) -> dict[str, Any]:
    """One period of the allocation loop; returns a summary (also what ``maas allocation solve`` prints)."""
    settings = settings_of(app)
    client = for_settings(settings)
    token = str(time.time())
    lock_ms = int(max(settings.allocation_period_s, settings.solver_time_limit_s) * 3 * 1000)
    if not client.set(ALLOCATION_LOCK, token, nx=True, px=lock_ms):
        return {"skipped": "another allocation run holds the lock"}
    try:
        control = Control(app)
        if not dry_run:
            reconcile_consumers(control)
            in_progress = _run_in_progress(settings)
            if in_progress is not None:
                return advance(control, in_progress)
        return new_run(control, client, dry_run=dry_run)
    finally:
        if client.get(ALLOCATION_LOCK) == token.encode():
            client.delete(ALLOCATION_LOCK)


def speeds_by_class(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """Per model: its latency objective and, per device class in the fleet, the service time the solver used,
    whether it was measured there (else declared, scaled by device speed) and whether that class meets the
    objective. What `maas allocation show` prints."""
    one_per_class: dict[str, Device] = {}
    for d in snapshot.devices:
        one_per_class.setdefault(d.device_class or d.id, d)
    return {
        m.name: {
            "p99_ms": m.p99_ms,
            "classes": {
                label: {
                    "service_ms": round(pairs.service_s(m, d) * 1000, 3),
                    "measured": d.device_class in m.service_s_by_class,
                    "meets_p99": pairs.meets_slo(m, d),
                }
                for label, d in sorted(one_per_class.items())
            },
        }
        for m in snapshot.models
    }


def _run_in_progress(settings: Settings) -> int | None:
    with session_scope(settings.sqlalchemy_url) as session:
        run = session.scalars(
            select(AllocationRun).where(AllocationRun.status == RunStatus.EXECUTING).order_by(AllocationRun.id.desc())
        ).first()
        if run is None:
            return None
        age_s = (utcnow() - device_rows.as_utc(run.started_at)).total_seconds()
        if age_s > 2 * settings.load_timeout_s:
            run.status, run.finished_at = RunStatus.FAILED, utcnow()
            run.reason = f"moves not done after {age_s:.0f}s; the next run re-solves from what is"
            return None
        return run.id


def new_run(control: Control, client: redis.Redis, *, dry_run: bool) -> dict[str, Any]:
    settings = control.settings
    with session_scope(settings.sqlalchemy_url) as session:
        state = fleet_state.read(session, client, settings)
    plan = solve(state.snapshot)
    current = {m.name: m.current for m in state.snapshot.models if m.current}
    status, reason, moves = RunStatus.PLANNED, "", []
    if plan.status is PlanStatus.INFEASIBLE:
        status, reason = RunStatus.FAILED, "pinned devices or minimum replicas cannot all be honoured; placement kept"
    else:
        try:
            moves = [
                {**asdict(m), "kind": m.kind.value, "after": list(m.after), "state": MoveState.PENDING, "replica": None}
                for m in plan_moves(
                    current,
                    plan.placement,
                    mem_bytes=state.mem_bytes,
                    capacity_bytes=state.capacity_bytes,
                    min_replicas=state.min_replicas,
                )
            ]
        except PlanningError as exc:
            status, reason = RunStatus.FAILED, str(exc)
    if plan.fallback_reason:
        reason = f"{reason}; {plan.fallback_reason}" if reason else plan.fallback_reason
    if plan.infeasible_models:
        reason = "; ".join(f"{name}: {why}" for name, why in plan.infeasible_models) + (f"; {reason}" if reason else "")
    if status == RunStatus.PLANNED:
        status = RunStatus.DRY_RUN if dry_run else (RunStatus.EXECUTING if moves else RunStatus.KEPT)
    inputs = {
        "devices": [asdict(d) for d in state.snapshot.devices],
        "demand": state.demand,
        "current": current,
        "target": {m: list(g) for m, g in plan.placement.items()},
        "speeds": speeds_by_class(state.snapshot),
    }
    with session_scope(settings.sqlalchemy_url) as session:
        run = AllocationRun(
            status=status,
            reason=reason,
            solver=plan.solver,
            solver_status=plan.status.value,
            objective=plan.objective,
            bound=plan.bound,
            gap=plan.gap,
            solve_s=plan.solve_s,
            inputs=inputs,
            moves=moves,
            finished_at=None if status == RunStatus.EXECUTING else utcnow(),
        )
        session.add(run)
        session.flush()
        run_id = run.id
    logs.event(
        log,
        "allocation_run",
        run=run_id,
        status=status,
        moves=len(moves),
        solver=plan.solver,
        solver_status=plan.status.value,
        gap=plan.gap,
        solve_s=round(plan.solve_s, 3),
        reason=reason,
    )
    summary = {
        "run": run_id,
        "status": status,
        "reason": reason,
        "moves": moves,
        "target": inputs["target"],
        "solver_status": plan.status.value,
        "objective": plan.objective,
        "bound": plan.bound,
        "gap": plan.gap,
    }
    if status == RunStatus.EXECUTING:
        summary.update(advance(control, run_id))
    return summary


def _replica_state(session: Session, replica_id: int | None) -> ReplicaState | None:
    if replica_id is None:
        return None
    replica = session.get(Replica, replica_id)
    return ReplicaState(replica.state) if replica is not None else None


def _settle(session: Session, moves: list[dict[str, Any]]) -> None:
    """Mark sent moves done or failed from their replica's state."""
    for move in moves:
        if move["state"] != MoveState.SENT:
            continue
        state = _replica_state(session, move["replica"])
        if (
            move["kind"] == MoveKind.LOAD
            and state is S.READY
            or move["kind"] == MoveKind.UNLOAD
            and state in (S.STOPPED, S.FAILED)
        ):
            move["state"] = MoveState.DONE
        elif move["kind"] == MoveKind.LOAD and state in (S.FAILED, S.STOPPED, None):
            move["state"] = MoveState.FAILED


def _run(session: Session, run_id: int) -> AllocationRun:
    run = session.get(AllocationRun, run_id)
    if run is None:
        raise LookupError(f"allocation run {run_id} vanished from the database")  # only a manual DELETE does this
    return run


def advance(control: Control, run_id: int) -> dict[str, Any]:
    """Start every move whose prerequisites are done; finish the run when nothing is left."""
    settings = control.settings
    with session_scope(settings.sqlalchemy_url) as session:
        run = _run(session, run_id)
        moves = [dict(m) for m in run.moves]
        _settle(session, moves)
    ready = [
        i
        for i, m in enumerate(moves)
        if m["state"] == MoveState.PENDING and all(moves[j]["state"] == MoveState.DONE for j in m["after"])
    ]
    blocked = [
        i
        for i, m in enumerate(moves)
        if m["state"] == MoveState.PENDING and any(moves[j]["state"] == MoveState.FAILED for j in m["after"])
    ]
    for i in blocked:
        moves[i]["state"] = MoveState.FAILED
    for i in ready:
        moves[i].update(_start(control, moves[i], run_id))
    finished = all(m["state"] in (MoveState.DONE, MoveState.FAILED) for m in moves)
    with session_scope(settings.sqlalchemy_url) as session:
        run = _run(session, run_id)
        run.moves = moves
        if finished:
            failed = [m for m in moves if m["state"] == MoveState.FAILED]
            run.status, run.finished_at = (RunStatus.DONE if not failed else RunStatus.DONE_WITH_FAILURES), utcnow()
    return {"run": run_id, "started": len(ready), "finished": finished}


def _start(control: Control, move: dict[str, Any], run_id: int) -> dict[str, Any]:
    model, worker = move["model"], move["device"]
    by = f"allocation run {run_id}"
    try:
        if move["kind"] == MoveKind.LOAD:
            order = control.load(model, worker=worker, reason=f"allocation run: load on {worker}", requested_by=by)
            return {"state": MoveState.SENT if order.sent is not None else MoveState.DONE, "replica": order.replica_id}
        with session_scope(control.settings.sqlalchemy_url) as session:
            version = registry.resolve(session, model)
            device = device_rows.by_worker(session, worker)
            replica = replica_rows.find_live(session, version.id, device.id) if device else None
            replica_id = replica.id if replica else None
            if replica is not None:
                replica.requested_by = by
        if replica_id is None:
            return {"state": MoveState.DONE, "replica": None}  # already gone
        control.send_stop(replica_id, worker)
        return {"state": MoveState.SENT, "replica": replica_id}
    except Exception as exc:
        # A move that cannot start is recorded on the run and never retried blindly: the next run re-solves.
        # Our own errors are expected (no memory, worker gone); anything else is a bug or an outage: traceback.
        reason = str(exc) if isinstance(exc, MaasError) else f"{type(exc).__name__}: {exc}"
        logs.event(
            log,
            "move_failed",
            logging.WARNING,
            exc_info=None if isinstance(exc, MaasError) else exc,
            model=model,
            worker=worker,
            kind=move["kind"],
            reason=reason,
        )
        return {"state": MoveState.FAILED, "error": reason}


def reconcile_consumers(control: Control) -> dict[str, list[str]]:
    """Make each answering worker consume exactly the queues of the models it holds READY."""
    consumed = control.model_queues_consumed()
    expected: dict[str, set[str]] = {}
    with session_scope(control.settings.sqlalchemy_url) as session:
        for r in replica_rows.all_with_devices(session):
            if r.state == S.READY.value:
                expected.setdefault(r.device.worker_name, set()).add(model_queue(r.version.model.name))
    fixed: dict[str, list[str]] = {}
    for worker, actual in consumed.items():
        want = expected.get(worker, set())
        for queue in sorted(want - actual):
            control.add_consumer(worker, queue)
            fixed.setdefault(worker, []).append(f"+{queue}")
        for queue in sorted(actual - want):
            control.cancel_consumer(worker, queue)
            fixed.setdefault(worker, []).append(f"-{queue}")
    if fixed:
        logs.event(log, "consumers_reconciled", logging.WARNING, changes=fixed)
    return fixed
