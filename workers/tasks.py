"""The Celery tasks a worker runs. Thin: each one unpacks its message and calls the logic it names.

Task names are the wire contract with producers (``app.client`` sends them by name and never imports this module).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from celery.exceptions import Ignore, Reject

from app import ledger, logs
from app.celery_app import CONTROL_PRIORITY, control_queue, model_queue
from app.errors import DeadlineExceeded, MaasError, NotLoaded
from app.signature import answer, decode_tensor, rows_of, validate_inputs
from workers import batching, lifecycle
from workers.context import current
from workers.telemetry import device_class

log = logging.getLogger("maas.worker")


def infer(
    app: Celery, model: str, version: int | None, inputs: list[dict[str, Any]], deadline_at: float | None = None
) -> dict:
    ctx = current()
    loaded = ctx.cache.get(model, version)
    if loaded is None:
        if not ctx.cache.versions_of(model):
            # We consume the queue a moment longer than we hold the model (the cancel runs after the unload
            # task). Give the message back for a replica that holds it; it is not lost and not failed.
            raise Reject(f"{model} is not held by {ctx.worker_name}", requeue=True)
        raise NotLoaded(f"{model}:{version} is not loaded; this replica serves versions {ctx.cache.versions_of(model)}")
    if loaded.max_batch_size > 1:
        return _infer_batch(app, ctx, loaded, batching.Member(None, model, version, inputs, deadline_at))
    try:
        if deadline_at is not None and time.time() > deadline_at:
            late_s = time.time() - deadline_at
            raise DeadlineExceeded(f"the deadline passed {late_s:.3f}s before the request could run; not executed")
        validate_inputs(loaded.inputs, inputs)
        arrays = {t["name"]: decode_tensor(t) for t in inputs}
        started = time.perf_counter()
        outputs = loaded.runtime.infer(arrays)
        service_s = time.perf_counter() - started
    except MaasError as exc:
        _log_failure(ctx.worker_name, model, loaded.version, exc)
        raise
    ctx.observations.add(model, device_class(ctx.device), rows_of(inputs), service_s)
    return answer(model, loaded.version, outputs, inputs, ctx.worker_name, service_s)


def _log_failure(worker: str, model: str, version: int | None, exc: MaasError) -> None:
    logs.event(
        log,
        "request_failed",
        logging.WARNING,
        model=model,
        version=version,
        worker=worker,
        code=exc.code,
        reason=exc.message,
    )


def _infer_batch(app: Celery, ctx, loaded, primary: batching.Member) -> dict:  # noqa: ANN001
    """This request and up to max_batch_size - 1 waiting ones of the same model, as one runtime call."""
    members = [
        primary,
        *batching.gather(ctx.redis, model_queue(loaded.model), loaded.max_batch_size - 1, loaded.max_queue_delay_s),
    ]
    service_s = batching.execute(members, loaded, ctx.worker_name)
    batching.publish(app, members, ctx.worker_name)
    rows = sum(rows_of(m.inputs) for m in members if m.result is not None)
    if rows:
        ctx.observations.add(loaded.model, device_class(ctx.device), rows, service_s)
    if primary.error is not None:
        _log_failure(ctx.worker_name, loaded.model, loaded.version, primary.error)
        raise primary.error
    primary.result["parameters"]["batch"] = len(members)
    return primary.result


def _dedup(client, task_id: str, ref: str | None, request: tuple):  # noqa: ANN001, ANN202
    """For requests that may travel as several copies (aging): run the first copy taken, drop the others."""
    if ledger.answered(client, task_id):
        raise Ignore()  # another copy already answered; keep its result
    if ref is None:
        return request
    found = ledger.original(client, ref)
    if found is None:
        raise Ignore()  # answered and forgotten meanwhile
    return found


def register(app: Celery) -> None:
    """Define every worker task on ``app``."""

    @app.task(name="maas.infer", throws=(MaasError,), bind=True)
    def infer_task(
        task,  # noqa: ANN001 - the bound Celery task
        model: str,
        version: int | None,
        inputs: list[dict[str, Any]] | None,
        deadline_at: float | None = None,
        ref: str | None = None,
        dedup: bool = False,
    ) -> dict[str, Any]:
        if dedup:
            model, version, inputs, deadline_at = _dedup(
                current().redis, task.request.id, ref, (model, version, inputs, deadline_at)
            )
        return infer(app, model, version, inputs, deadline_at)

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
            app.send_task(
                "maas.unload",
                args=[replica_id],
                queue=control_queue(ctx.worker_name),
                priority=CONTROL_PRIORITY,
                task_id=unload_task_id,
            )
        return info

    @app.task(name="maas.unload")
    def unload_task(replica_id: int) -> dict[str, Any]:
        return lifecycle.unload(current(), replica_id)

    register_system(app)


def register_system(app: Celery) -> None:
    """Tasks beat sends to the system queue, and the bare task the dispatch benchmark compares against.

    They run on serving workers or on a ``maas controller`` (no device, no worker context), so they use only the
    app's settings and a Redis client of their own.
    """
    clients: list[Any] = []

    def redis_client():  # noqa: ANN202 - redis.Redis, created in the process that runs the task
        if not clients:
            import redis

            clients.append(redis.Redis.from_url(app.maas_settings.redis_url))  # type: ignore[attr-defined]
        return clients[0]

    @app.task(name="maas.ping")
    def ping_task(payload: Any = None) -> Any:
        """A bare task for the dispatch benchmark: the cost of Celery itself on this broker and pool."""
        return payload

    @app.task(name="maas.recover")
    def recover_task() -> dict[str, int]:
        from beat.recovery import recover

        return recover(app)

    @app.task(name="maas.age")
    def age_task() -> dict[str, int]:
        from beat.aging import age_all

        return age_all(app, app.maas_settings, redis_client())  # type: ignore[attr-defined]

    @app.task(name="maas.allocate")
    def allocate_task(dry_run: bool = False) -> dict[str, Any]:
        from beat.allocation import allocate

        return allocate(app, dry_run=dry_run)

    @app.task(name="maas.reap")
    def reap_task() -> list[str]:
        from beat.reaper import reap

        return reap(app.maas_settings)  # type: ignore[attr-defined]
