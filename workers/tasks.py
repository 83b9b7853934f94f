"""The Celery tasks a serving worker runs. Thin: each one unpacks its message and calls the logic it names.

Task names are the wire contract with producers (``app.client`` and ``app.control`` send them by name and never
import this module). Beat's tasks are in ``beat.tasks``; the CLI registers them here too when this worker is to
run them.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from app import logs, outage, signing
from app.broker import dlq, holdings, ledger
from app.broker.layout import model_queue
from app.control import Control
from app.errors import ForgedMessage, MaasError, MalformedMessage, NotLoaded
from app.signature import rows_of
from workers import batching, fencing, generating, lifecycle
from workers.cache import Loaded
from workers.context import WorkerContext, current
from workers.telemetry import device_class

log = logging.getLogger("maas.worker")


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
    primary.size = batching.request_bytes(inputs)
    return _run_batch(app, ctx, loaded, primary)


def generate(
    app: Celery,
    task: Task,
    model: str,
    version: int | None,
    prompt: str,
    params: dict[str, Any] | None,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    ctx = current()
    lost_at = holdings.hold(ctx.redis, ctx.worker_name, task.request.id, finished=ctx.last_held)
    ctx.last_held = task.request.id
    _give_back_if_fenced(ctx, lost_at)
    if ledger.answered(ctx.redis, task.request.id):
        raise Ignore()  # redelivered after its result was stored: answered once
    loaded = ctx.cache.get(model, version)
    if loaded is None:
        if not ctx.cache.versions_of(model):
            queue = (task.request.delivery_info or {}).get("routing_key") or model_queue(model)
            _give_back(ctx, model, (task.request.id, queue))
        raise NotLoaded(f"{model}:{version} is not loaded; this replica serves {ctx.cache.versions_of(model)}")
    own = generating.request_of(task.request.id, model, version, prompt, params, kwargs, lambda h: _header(task, h))
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
        deliveries = dlq.count_delivery(ctx.redis, task_id)
        if deliveries > dlq.MAX_DELIVERIES:
            reason = (
                f"no worker consuming {queue} holds {model!r}: delivered {dlq.MAX_DELIVERIES} times, "
                f"last to {ctx.worker_name}"
            )
            dlq.record(ctx.redis, task_id, queue, reason, deliveries=deliveries)
            raise NotLoaded(reason)
    raise Reject(f"{model} is not held by {ctx.worker_name}", requeue=True)


def _run_batch(app: Celery, ctx: WorkerContext, loaded: Loaded, primary: batching.Member) -> dict[str, Any]:
    members = [primary]
    if loaded.max_batch_size > 1:
        queue = model_queue(loaded.model)
        members += batching.gather(ctx.redis, queue, loaded.max_batch_size - 1, loaded.max_queue_delay_s)
    limits = batching.Limits(
        loaded.max_request_bytes or ctx.settings.max_request_bytes,
        loaded.max_result_bytes or ctx.settings.max_result_bytes,
    )
    service_s = _emulate_device_speed(ctx, batching.execute(members, loaded, ctx.worker_name, limits))
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


def _emulate_device_speed(ctx: WorkerContext, service_s: float) -> float:
    """A virtual device declared slower (MAAS_VIRTUAL_SLOWDOWN) takes that much longer: sleep the difference.

    What the fleet measures per device class then differs as it would between a fast and a slow card.
    """
    factor = ctx.settings.virtual_slowdown
    if ctx.device.kind != "virtual" or factor <= 1.0:
        return service_s
    time.sleep(service_s * (factor - 1.0))
    return service_s * factor


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


def _header(task: Task, name: str) -> Any:
    """A custom header of the running task's message (Celery puts custom headers on the request)."""
    value = getattr(task.request, name, None)
    if value is None and isinstance(task.request.headers, dict):
        value = task.request.headers.get(name)
    return value


def _submitted_at(task: Task) -> float | None:
    """The producer's submission time, from the message's headers."""
    value = _header(task, "maas_submitted_at")
    return float(value) if isinstance(value, int | float) else None


def _check_signed(task: Task) -> None:
    """Refuse a control message not signed with the fleet key: nothing is loaded, drained or unloaded."""
    ctx = current()
    try:
        signing.check_control(
            ctx.settings.signing_key,
            task.name,
            task.request.id,
            task.request.args,
            task.request.kwargs,
            _header(task, signing.FIELD),
        )
    except ForgedMessage as exc:
        logs.event(
            log,
            "forged_message",
            logging.ERROR,
            worker=ctx.worker_name,
            task=task.name,
            task_id=task.request.id,
            reason=exc.message,
        )
        raise


def _infer_shape(
    model: Any, version: Any, inputs: Any, deadline_at: Any = None, ref: Any = None, dedup: Any = False
) -> None:
    """The arguments an infer message carries (bound, never called: the argument check of ``maas.infer``)."""


_INFER_SIGNATURE = inspect.signature(_infer_shape)


def _infer_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """(model, version, inputs, deadline_at, ref, dedup) of an infer message; MalformedMessage if it has others."""
    try:
        bound = _INFER_SIGNATURE.bind(*args, **kwargs)
    except TypeError as exc:
        raise MalformedMessage(f"an infer message's arguments do not fit [model, version, inputs]: {exc}") from None
    bound.apply_defaults()
    model, version, inputs, deadline_at, ref, dedup = bound.arguments.values()
    batching.check_infer_args(model, version, inputs, deadline_at)
    if ref is not None and not isinstance(ref, str):
        raise MalformedMessage("an infer message's ref must be a task id")
    return model, version, inputs, deadline_at, ref, bool(dedup)


def _control_args(task: str, args: tuple[Any, ...], kwargs: dict[str, Any], count: int) -> tuple[Any, ...]:
    """A control order's arguments: a replica id (an integer), then for a drain the unload's task id or null."""
    if kwargs or len(args) not in (count, 1) or not isinstance(args[0], int) or isinstance(args[0], bool):
        raise MalformedMessage(f"{task} takes a replica id (and, for a drain, an unload task id); got {args!r:.80}")
    padded = (*args, None) if len(args) < count else args
    if count == 2 and padded[1] is not None and not isinstance(padded[1], str):
        raise MalformedMessage(f"{task}: the unload task id must be a string or null")
    return padded


def _redelivered(task: Task) -> bool:
    """Whether this message was delivered before (kombu's restore, or holdings.give_back, marks it so)."""
    info = task.request.delivery_info or {}
    headers = task.request.headers if isinstance(task.request.headers, dict) else {}
    return bool(info.get("redelivered") or headers.get("redelivered") or getattr(task.request, "redelivered", False))


def _give_back_if_fenced(ctx: WorkerContext, lost_at: int | None) -> None:
    """Declared lost while cut off: what this worker holds may have been replaced. Reconcile, and give the request
    back for a replica the fleet owns, whatever the reconcile meets (a database still out of reach included)."""
    if not fencing.is_fenced(ctx, lost_at):
        return
    try:
        fencing.reconcile(
            ctx, f"declared lost at epoch {lost_at}; this worker registered at {ctx.epoch}", fenced_at=lost_at
        )
    finally:
        raise Reject(f"{ctx.worker_name} was fenced; request given back", requeue=True)


def _infer_task(app: Celery, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """One request: recorded as held, fenced if this worker was declared lost, skipped if already answered."""
    model, version, inputs, deadline_at, ref, dedup = _infer_args(args, kwargs)
    ctx = current()
    # Recorded while it runs, so that if this worker dies the request goes back to the queue at once
    # (app.broker.holdings) rather than after the visibility timeout.
    lost_at = holdings.hold(ctx.redis, ctx.worker_name, task.request.id, finished=ctx.last_held)
    ctx.last_held = task.request.id
    _give_back_if_fenced(ctx, lost_at)
    if _redelivered(task) and ledger.answered(ctx.redis, task.request.id):
        # Given back after its worker died between storing the answer and acknowledging the message: the
        # caller has its answer, so it is not run (and answered) a second time.
        raise Ignore()
    if dedup:
        model, version, inputs, deadline_at = _dedup(
            ctx.redis, task.request.id, ref, (model, version, inputs, deadline_at)
        )
    queue = (task.request.delivery_info or {}).get("routing_key") or model_queue(model)
    return infer(app, model, version, inputs, deadline_at, _submitted_at(task), (task.request.id, queue))


def register(app: Celery) -> None:
    """Define every serving-worker task on ``app``."""

    # typing=False and *args: a message with the wrong arguments is answered MALFORMED_MESSAGE (a typed error the
    # client knows), not with Python's TypeError.
    @app.task(name="maas.infer", throws=(MaasError,), bind=True, typing=False)
    def infer_task(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # A Redis failover or restart met mid-request (recording the hold, checking for an answer, storing the
        # answers of a batch) is waited out and the request served again, rather than answered with the driver's
        # error. Repeating is safe for this request: the hold and its answer are idempotent writes, a second answer
        # is dropped. Requests already gathered into its batch when the outage came are not carried over: the
        # request ledger sends them again (late, not lost). The wait counts from the first error, not the start
        # (a long request must not eat it), and by time, not MAAS_RETRY_ATTEMPTS (whose backoff spends about 3 s,
        # less than a Sentinel promotion); past MAAS_RETRY_MAX_S the answer is BROKER_UNAVAILABLE, typed.
        max_s = current().settings.retry_max_s
        return outage.retrying(
            lambda: _infer_task(app, task, args, kwargs),
            f"serving request {task.request.id}",
            attempts=outage.attempts_within(max_s),
            max_s=max_s,
            from_first_error=True,
        )

    @app.task(name="maas.generate", throws=(MaasError,), bind=True)
    def generate_task(
        task: Task,
        model: str,
        version: int | None,
        prompt: str,
        params: dict[str, Any] | None,
        deadline_at: float | None = None,
        first_token_deadline_at: float | None = None,
    ) -> dict[str, Any]:
        """One generation, joined by the waiting ones of its model (continuous batching, ``workers.generating``)."""
        deadlines = {"deadline_at": deadline_at, "first_token_deadline_at": first_token_deadline_at}
        return generate(app, task, model, version, prompt, params, deadlines)

    @app.task(name="maas.chunk")
    def chunk_task(job_id: str, index: int) -> dict[str, Any]:
        from workers.jobs import run_chunk

        return run_chunk(app, job_id, index, lambda *a: infer(app, *a))

    # Control orders: the signature is checked before anything else, and arguments of the wrong shape are
    # MALFORMED_MESSAGE (typing=False, *args), not Python's TypeError.
    @app.task(name="maas.load", throws=(MaasError,), bind=True, typing=False)
    def load_task(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        _check_signed(task)
        (replica_id,) = _control_args(task.name, args, kwargs, 1)
        return lifecycle.load(current(), replica_id)

    @app.task(name="maas.drain", throws=(MaasError,), bind=True, typing=False)
    def drain_task(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        _check_signed(task)
        replica_id, unload_task_id = _control_args(task.name, args, kwargs, 2)
        ctx = current()
        info, then_unload = lifecycle.drain(ctx, replica_id)
        if then_unload:
            # A separate message, so the queue cancel (run on the event loop after this task) happens before the
            # runtime is released: nothing is consumed for a model while it unloads.
            Control(app).send_unload(replica_id, ctx.worker_name, task_id=unload_task_id)
        return info

    @app.task(name="maas.unload", throws=(MaasError,), bind=True, typing=False)
    def unload_task(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        _check_signed(task)
        (replica_id,) = _control_args(task.name, args, kwargs, 1)
        return lifecycle.unload(current(), replica_id)

    @app.task(name="maas.reconcile", throws=(MaasError,), bind=True, typing=False)
    def reconcile_task(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # It drops models and registers a new life: an order like load and unload, signed and checked the same way.
        _check_signed(task)
        if kwargs or len(args) > 1 or (args and not isinstance(args[0], str)):
            raise MalformedMessage(f"maas.reconcile takes one reason string; got {args!r:.80}")
        return fencing.reconcile(current(), (args[0] if args else "") or "asked to reconcile")

    @app.task(name="maas.ping")
    def ping_task(payload: Any = None) -> Any:
        """A bare task for the dispatch benchmark: the cost of Celery itself on this broker and pool."""
        return payload
