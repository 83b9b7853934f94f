"""Dynamic batching: when a request for a batching model runs, waiting requests of the same model join it.

Each request is still its own message, so the worker takes up to ``max_batch_size - 1`` more straight from the
model's priority lists, highest level first, in one Lua call (one round trip for the whole batch, instead of one
per message through the consumer). They run as one runtime call, and each gets its own result, error or
deadline verdict, stored under its own task id. A message taken this way is in no queue and not in kombu's
unacknowledged set, so if this worker dies before storing its result, the request ledger finds it and sends it
again (``app.broker.ledger``): still at least once.

Priorities hold: a batch only ever takes the highest waiting requests of its model, and a request of another
model waits behind at most the one batch in progress.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from celery import Celery

from app import logs
from app.broker import dlq, layout, ledger, scripts
from app.errors import DeadlineExceeded, MaasError, MalformedMessage, NotLoaded, RequestTooLarge, ResultTooLarge
from app.signature import answer, decode_tensor, rows_of, validate_inputs
from workers.cache import Loaded

log = logging.getLogger("maas.worker")


@dataclass
class Member:
    """One request of a batch: the running task's own (task_id None) or one taken from the queue."""

    task_id: str | None
    model: str
    version: int | None
    inputs: list[dict[str, Any]] | None
    deadline_at: float | None
    ref: str | None = None  # a promoted copy (aging): its body is in the request ledger
    dedup: bool = False  # may travel as several copies: run only if no copy answered yet
    submitted_at: float | None = None  # unix s, from the producer's header: the start of its queue time
    size: int | None = None  # bytes of the request as it travelled (its message, or its inputs' JSON)
    result: dict[str, Any] | None = None
    error: MaasError | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def decode_message(raw: bytes) -> Member:
    """A kombu/Celery (protocol 2, JSON) infer message -> Member; raise MalformedMessage if it is not one."""
    envelope = layout.decode(raw)
    if len(envelope.args) != 3:
        raise MalformedMessage(f"an infer message has args [model, version, inputs]; got {len(envelope.args)} args")
    model, version, inputs = envelope.args
    kwargs = envelope.kwargs
    check_infer_args(model, version, inputs, kwargs.get("deadline_at"))
    submitted_at = envelope.headers.get("maas_submitted_at")
    if not _is_number(submitted_at) and submitted_at is not None:
        raise MalformedMessage(f"header maas_submitted_at must be a unix time; got {submitted_at!r:.60}")
    return Member(
        envelope.task_id,
        model,
        version,
        inputs,
        kwargs.get("deadline_at"),
        kwargs.get("ref"),
        bool(kwargs.get("dedup")),
        submitted_at=envelope.headers.get("maas_submitted_at"),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_infer_args(model: Any, version: Any, inputs: Any, deadline_at: Any) -> None:
    """Raise MalformedMessage unless an infer message's arguments have the types producers send."""
    if not isinstance(model, str):
        raise MalformedMessage(f"an infer message's model must be a name; got {type(model).__name__}")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise MalformedMessage(f"an infer message's version must be an integer or null; got {version!r:.60}")
    if inputs is not None and not (isinstance(inputs, list) and all(isinstance(t, dict) for t in inputs)):
        raise MalformedMessage("an infer message's inputs must be a list of tensor objects")
    if deadline_at is not None and not _is_number(deadline_at):
        raise MalformedMessage(f"deadline_at must be a unix time; got {deadline_at!r:.60}")


def _judge(client: redis.Redis, queue: str, raw: bytes) -> Member | None:
    """A taken message alone: a malformed one with an id gets its own error; one without an id (nothing to answer
    under) is dead-lettered with the reason, and is out of the queue for good."""
    try:
        member = decode_message(raw)
        member.size = len(raw)
        return member
    except MalformedMessage as exc:
        task_id = layout.task_id_of(raw)
        if task_id is not None:
            return Member(task_id, "", None, None, None, error=exc)
        letter = dlq.record_malformed(client, queue, exc.message, raw)
        logs.event(log, "message_dead_lettered", logging.ERROR, queue=queue, dead_letter=letter, reason=exc.message)
        return None


def _resolve_copies(client: redis.Redis, members: list[Member]) -> list[Member]:
    """Drop copies whose request another copy already answered; fill promoted copies from the ledger."""
    kept = []
    for m in members:
        if m.error is not None:
            kept.append(m)
            continue
        if m.dedup and m.task_id is not None and ledger.answered(client, m.task_id):
            continue
        if m.ref is not None:
            found = ledger.original(client, m.ref)
            if found is None:
                continue
            m.model, m.version, m.inputs, m.deadline_at = found
        kept.append(m)
    return kept


def take(client: redis.Redis, queue: str, count: int) -> list[Member]:
    judged = [_judge(client, queue, raw) for raw in scripts.take_batch(client, queue, count)]
    return _resolve_copies(client, [m for m in judged if m is not None])


def gather(client: redis.Redis, queue: str, want: int, delay_s: float) -> list[Member]:
    """Take up to ``want`` waiting requests, waiting at most ``delay_s`` for the batch to fill."""
    members = take(client, queue, want)
    deadline = time.monotonic() + delay_s
    while len(members) < want and time.monotonic() < deadline:
        time.sleep(min(0.001, max(0.0, deadline - time.monotonic())))
        members += take(client, queue, want - len(members))
    return members


@dataclass(frozen=True)
class Limits:
    """The largest request a worker runs and the largest result it stores (MAAS_MAX_REQUEST_BYTES / _RESULT_)."""

    request_bytes: int
    result_bytes: int


#: Unbounded, for callers that check elsewhere (benchmarks).
NO_LIMITS = Limits(2**63, 2**63)
#: No JSON spelling of an array element takes more than this many characters per byte (a float16's repr).
_JSON_CHARS_PER_BYTE = 8


def request_bytes(inputs: Any) -> int:
    """The size of a request's inputs as JSON: what its message carried, near enough."""
    return len(json.dumps(inputs, separators=(",", ":")))


def _admit(member: Member, loaded: Loaded, now: float, limits: Limits = NO_LIMITS) -> None:
    """Check one member on its own; set its error if it cannot run."""
    try:
        if member.size is not None and member.size > limits.request_bytes:
            raise RequestTooLarge(
                f"the request is {member.size} bytes, over the fleet's limit of {limits.request_bytes} "
                "(MAAS_MAX_REQUEST_BYTES); not executed"
            )
        if member.model != loaded.model or member.version not in (None, loaded.version):
            raise NotLoaded(f"{member.model}:{member.version} is not loaded; this replica serves {loaded.version}")
        if member.deadline_at is not None and now > member.deadline_at:
            raise DeadlineExceeded(
                f"the deadline passed {now - member.deadline_at:.3f}s before the request could run; not executed"
            )
        inputs = member.inputs or []
        validate_inputs(loaded.inputs, inputs)
        member.arrays = {t["name"]: decode_tensor(t) for t in inputs}
    except MaasError as exc:
        member.error = exc


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]] | None:
    total = sum(rows)
    if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
        return None  # not row-aligned: the model's outputs cannot be split back per request
    bounds = np.cumsum([0, *rows])
    return [{n: a[bounds[i] : bounds[i + 1]] for n, a in outputs.items()} for i in range(len(rows))]


def _answer(
    member: Member,
    loaded: Loaded,
    outputs: dict[str, np.ndarray],
    worker: str,
    service_s: float,
    limits: Limits = NO_LIMITS,
) -> None:
    """Set the member's answer, or RESULT_TOO_LARGE in its place: a result over the limit is never stored."""
    array_bytes = sum(int(np.asarray(a).nbytes) for a in outputs.values())
    if array_bytes > limits.result_bytes:
        member.error = _too_large(array_bytes, limits)
        return
    result = answer(loaded.model, loaded.version, outputs, member.inputs or (), worker, service_s)
    if array_bytes * _JSON_CHARS_PER_BYTE + 4096 > limits.result_bytes:  # only then can its JSON be too large
        size = len(json.dumps(result, separators=(",", ":")))
        if size > limits.result_bytes:
            member.error = _too_large(size, limits)
            return
    member.result = result


def _too_large(size: int, limits: Limits) -> ResultTooLarge:
    return ResultTooLarge(
        f"the result is {size} bytes, over the fleet's limit of {limits.result_bytes} (MAAS_MAX_RESULT_BYTES); "
        "the model ran but its result was dropped"
    )


def execute(members: list[Member], loaded: Loaded, worker: str, limits: Limits = NO_LIMITS) -> float:
    """Run every admissible member, as one call when their inputs concatenate; returns the runtime's seconds."""
    now = time.time()
    for m in members:
        if m.error is None:
            _admit(m, loaded, now, limits)
    ready = [m for m in members if m.error is None]
    if not ready:
        return 0.0
    # Requests join one runtime call only when they differ in rows alone: same trailing dimensions per input.
    batchable = (
        len(ready) > 1
        and all(spec.shape and spec.shape[0] == -1 for spec in loaded.inputs)
        and all(len({m.arrays[s.name].shape[1:] for m in ready}) == 1 for s in loaded.inputs)
    )
    started = time.perf_counter()
    if batchable:
        joined = {s.name: np.concatenate([m.arrays[s.name] for m in ready]) for s in loaded.inputs}
        try:
            parts = _split(loaded.runtime.infer(joined), [rows_of(m.inputs or []) for m in ready])
        except MaasError as exc:
            # One bad request must not fail the others: run them one by one to find it.
            logs.event(
                log, "batch_split", logging.INFO, model=loaded.model, size=len(ready), code=exc.code, reason=exc.message
            )
            parts = None
        if parts is not None:
            service_s = time.perf_counter() - started
            for m, outputs in zip(ready, parts, strict=True):
                _answer(m, loaded, outputs, worker, service_s, limits)
            return service_s
    for m in ready:
        t0 = time.perf_counter()
        try:
            _answer(m, loaded, loaded.runtime.infer(m.arrays), worker, time.perf_counter() - t0, limits)
        except MaasError as exc:
            m.error = exc
    return time.perf_counter() - started


def report_failures(members: list[Member], worker: str) -> None:
    """One ``request_failed`` log line per member that ended with an error."""
    for m in members:
        if m.error is not None:
            logs.event(
                log,
                "request_failed",
                logging.WARNING,
                model=m.model,
                version=m.version,
                worker=worker,
                code=m.error.code,
                reason=m.error.message,
                task_id=m.task_id,
            )


def publish(app: Celery, members: list[Member]) -> None:
    """Store the results of the members taken from the queue under their own task ids.

    The running task's own member (``task_id`` None) is answered by Celery when the task returns or raises.
    """
    for m in members:
        if m.task_id is None:
            continue
        if m.error is not None:
            app.backend.mark_as_failure(m.task_id, m.error)
        else:
            app.backend.mark_as_done(m.task_id, m.result)
