"""The Celery tasks a serving worker runs. Thin: each one unpacks its message and calls the logic it names.

Task names are the wire contract with producers (``app.client`` and ``app.control`` send them by name and never
import this module). Beat's tasks are in ``beat.tasks``; the CLI registers them here too when this worker is to
run them.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from app.broker import dlq, holdings, ledger
from app.broker.layout import model_queue
from app.control import Control
from app.errors import MaasError, NotLoaded
from app.signature import rows_of
from workers import batching, generating, lifecycle
from workers.cache import Loaded
from workers.context import WorkerContext, current
from workers.telemetry import device_class


def infer(
    app: Celery,
    model: str,
    version: int | None,
    inputs: list[dict[str, Any]] | None,
    deadline_at: float | None = None,
    submitted_at: float | None = None,
    delivery: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Serve one request, with the waiting requests of its model when the model batches: one path for both.

    A model that does not batch runs a batch of one, so validation, deadlines, decoding, failure reports and
    service-time observations are written once. ``delivery`` is the message's (task id, queue), for the bounded
    redelivery of a request no replica here can serve.
    """
    ctx = current()
    loaded = ctx.cache.get(model, version)
    if loaded is None:
        if not ctx.cache.versions_of(model):
            _give_back(ctx, model, delivery)
        raise NotLoaded(f"{model}:{version} is not loaded; this replica serves versions {ctx.cache.versions_of(model)}")
    primary = batching.Member(None, model, version, inputs, deadline_at, submitted_at=submitted_at)
    return _run_batch(app, ctx, loaded, primary)


def generate(
    app: Celery,
    task: Task,
    model: str,
    version: int | None,
    prompt: str,
    params: dict[str, Any] | None,
    deadline_at: float | None,
) -> dict[str, Any]:
    ctx = current()
    holdings.hold(ctx.redis, ctx.worker_name, task.request.id, finished=ctx.last_held)
    ctx.last_held = task.request.id
    if ledger.answered(ctx.redis, task.request.id):
        raise Ignore()  # redelivered after its result was stored: answered once
    loaded = ctx.cache.get(model, version)
    if loaded is None:
        if not ctx.cache.versions_of(model):
            queue = (task.request.delivery_info or {}).get("routing_key") or model_queue(model)
            _give_back(ctx, model, (task.request.id, queue))
        raise NotLoaded(f"{model}:{version} is not loaded; this replica serves {ctx.cache.versions_of(model)}")
    own = generating.Request(task.request.id, model, version, prompt, params, deadline_at, _submitted_at(task))
    return generating.serve(app, ctx, loaded, own)


def _give_back(ctx: WorkerContext, model: str, delivery: tuple[str, str] | None) -> None:
    """Requeue a request for a model this worker does not hold, a bounded number of times.

    We consume a queue a moment longer than we hold its model (the cancel runs after the unload task), so the
    message goes back for a replica that holds it: not lost, not failed. A message naming a model that no replica
    on its queue will ever hold would go round for ever: past ``dlq.MAX_DELIVERIES`` it is answered NOT_LOADED
    and dead-lettered.
    """
    if delivery is not None:
        task_id, queue = delivery
        if dlq.count_delivery(ctx.redis, task_id) > dlq.MAX_DELIVERIES:
            reason = (
                f"no worker consuming {queue} holds {model!r}: delivered {dlq.MAX_DELIVERIES} times, "
                f"last to {ctx.worker_name}"
            )
            dlq.record(ctx.redis, task_id, queue, reason)
            raise NotLoaded(reason)
    raise Reject(f"{model} is not held by {ctx.worker_name}", requeue=True)


def _run_batch(app: Celery, ctx: WorkerContext, loaded: Loaded, primary: batching.Member) -> dict[str, Any]:
    members = [primary]
    if loaded.max_batch_size > 1:
        queue = model_queue(loaded.model)
        members += batching.gather(ctx.redis, queue, loaded.max_batch_size - 1, loaded.max_queue_delay_s)
    service_s = batching.execute(members, loaded, ctx.worker_name)
    batching.report_failures(members, ctx.worker_name)
    batching.publish(app, members)
    _count(ctx, loaded, members, service_s)
    rows = sum(rows_of(m.inputs) for m in members if m.result is not None and m.inputs)
    if rows:
        ctx.observations.add(loaded.model, device_class(ctx.device), rows, service_s)
    if primary.error is not None:
        raise primary.error
    assert primary.result is not None  # execute() sets a result or an error on every member
    if len(members) > 1:
        primary.result["parameters"]["batch"] = len(members)
    return primary.result


def _count(ctx: WorkerContext, loaded: Loaded, members: list[batching.Member], service_s: float) -> None:
    """The Triton-style counts of one execution: per request, and one execution when anything ran."""
    finished = time.time()
    started = finished - service_s
    for m in members:
        submitted = m.submitted_at if m.submitted_at is not None else started
        ctx.stats.request(
            loaded.model,
            loaded.version,
            error_code=m.error.code if m.error is not None else None,
            rows=rows_of(m.inputs) if m.inputs else 0,
            request_s=max(0.0, finished - submitted),
            queue_s=max(0.0, started - submitted),
            compute_s=service_s,
        )
    if any(m.result is not None for m in members):
        ctx.stats.execution(loaded.model, loaded.version)


#: What an infer message carries: (model, version, inputs, deadline_at).
InferArgs = tuple[str, int | None, list[dict[str, Any]] | None, float | None]


def _dedup(client: redis.Redis, task_id: str, ref: str | None, request: InferArgs) -> InferArgs:
    """For requests that may travel as several copies (aging): run the first copy taken, drop the others."""
    if ledger.answered(client, task_id):
        raise Ignore()  # another copy already answered; keep its result
    if ref is None:
        return request
    found = ledger.original(client, ref)
    if found is None:
        raise Ignore()  # answered and forgotten meanwhile
    return found


def _submitted_at(task: Task) -> float | None:
    """The producer's submission time, from the message's headers (Celery puts custom headers on the request)."""
    value = getattr(task.request, "maas_submitted_at", None)
    if value is None and isinstance(task.request.headers, dict):
        value = task.request.headers.get("maas_submitted_at")
    return float(value) if isinstance(value, int | float) else None


def register(app: Celery) -> None:
    """Define every serving-worker task on ``app``."""

    @app.task(name="maas.infer", throws=(MaasError,), bind=True)
    def infer_task(
        task: Task,
        model: str,
        version: int | None,
        inputs: list[dict[str, Any]] | None,
        deadline_at: float | None = None,
        ref: str | None = None,
        dedup: bool = False,
    ) -> dict[str, Any]:
        ctx = current()
        # Recorded while it runs, so that if this worker dies the request goes back to the queue at once
        # (app.broker.holdings) rather than after the visibility timeout.
        holdings.hold(ctx.redis, ctx.worker_name, task.request.id, finished=ctx.last_held)
        ctx.last_held = task.request.id
        if dedup:
            model, version, inputs, deadline_at = _dedup(
                ctx.redis, task.request.id, ref, (model, version, inputs, deadline_at)
            )
        queue = (task.request.delivery_info or {}).get("routing_key") or model_queue(model)
        return infer(app, model, version, inputs, deadline_at, _submitted_at(task), (task.request.id, queue))

    @app.task(name="maas.generate", throws=(MaasError,), bind=True)
    def generate_task(
        task: Task,
        model: str,
        version: int | None,
        prompt: str,
        params: dict[str, Any] | None,
        deadline_at: float | None = None,
    ) -> dict[str, Any]:
        """One generation, joined by the waiting ones of its model (continuous batching, ``workers.generating``)."""
        return generate(app, task, model, version, prompt, params, deadline_at)

    @app.task(name="maas.chunk")
    def chunk_task(job_id: str, index: int) -> dict[str, Any]:
        from workers.jobs import run_chunk

        return run_chunk(app, job_id, index, lambda *a: infer(app, *a))

    @app.task(name="maas.load", throws=(MaasError,))
    def load_task(replica_id: int) -> dict[str, Any]:
        return lifecycle.load(current(), replica_id)

    @app.task(name="maas.drain")
    def drain_task(replica_id: int, unload_task_id: str | None = None) -> dict[str, Any]:
        ctx = current()
        info, then_unload = lifecycle.drain(ctx, replica_id)
        if then_unload:
            # A separate message, so the queue cancel (run on the event loop after this task) happens before the
            # runtime is released: nothing is consumed for a model while it unloads.
            Control(app).send_unload(replica_id, ctx.worker_name, task_id=unload_task_id)
        return info

    @app.task(name="maas.unload")
    def unload_task(replica_id: int) -> dict[str, Any]:
        return lifecycle.unload(current(), replica_id)

    @app.task(name="maas.ping")
    def ping_task(payload: Any = None) -> Any:
        """A bare task for the dispatch benchmark: the cost of Celery itself on this broker and pool."""
        return payload
