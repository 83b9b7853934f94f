"""What admitting one infer request sends and records, built once for every front door. Pure: no I/O.

The Python client and the HTTP gateway both turn a checked request and the scheduler's decision into an
:class:`InferOrder`: the Celery task's name, args, kwargs and headers, and the :class:`~app.broker.scripts.Admission`
that checks the queue's limit, records the request (ledger body, aging facts) and pushes its Celery message onto
its priority list, in one atomic Redis call. Publishing there rather than through kombu saves the round trips of
Celery's ``send_task`` (measured with ``bench.dispatch``); the message is byte for byte what kombu would store, so
workers cannot tell the difference. Celery's "task-sent" event is not emitted for infer requests: Flower sees them
from the moment a worker receives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.broker.layout import celery_message, model_queue
from app.broker.scripts import Admission
from app.generation import GENERATE_TASK
from app.policies import Policy

#: The task every infer request runs.
INFER_TASK = "maas.infer"


@dataclass(frozen=True)
class InferOrder:
    task_id: str
    model: str
    queue: str
    priority: int
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]
    admission: Admission
    task: str = INFER_TASK


def infer_order(
    *,
    task_id: str,
    model: str,
    send_version: int | None,
    tensors: list[dict[str, Any]],
    policy: str,
    priority: int,
    estimated_s: float,
    backlog_s: float,
    request_class: str,
    deadline_s: float | None,
    max_queue: int,
    now: float,
) -> InferOrder:
    queue = model_queue(model)
    args: list[Any] = [model, send_version, tensors]
    kwargs: dict[str, Any] = {"deadline_at": now + deadline_s} if deadline_s else {}
    aging = policy == Policy.AGING
    if aging:
        kwargs["dedup"] = True  # a promoted copy (beat/aging.py) may run first
    headers = {"maas_submitted_at": now, "maas_class": request_class}
    # What a resend needs, kept by the ledger until the result exists.
    ledger_body = {
        "name": INFER_TASK,
        "queue": queue,
        "priority": priority,
        "args": args,
        "kwargs": kwargs,
        "headers": headers,
    }
    aging_facts = {"c": request_class, "e": estimated_s, "b": backlog_s, "l": priority} if aging else None
    # The message travels inside the admission call: admitted and queued in one atomic round trip.
    message = celery_message(INFER_TASK, task_id, args, kwargs, headers, queue, priority)
    admission = Admission(queue, model, task_id, now, ledger_body, max_queue, aging_facts, message, priority)
    return InferOrder(task_id, model, queue, priority, args, kwargs, headers, admission)


def generate_order(
    *,
    task_id: str,
    model: str,
    send_version: int | None,
    prompt: str,
    params: dict[str, Any],
    priority: int,
    request_class: str,
    deadline_s: float | None,
    max_queue: int,
    now: float,
    first_token_deadline_s: float | None = None,
    policy: str | None = None,
    backlog_s: float = 0.0,
) -> InferOrder:
    """A generation request (``maas.generate``): admitted, recorded and queued exactly as an infer request.

    No aging copies: a generation is long, and its promotion would have to travel with its stream. Its wait is
    aged inside the worker's engine instead, which the headers feed: the model's policy when it was admitted and
    the wait FIFO would have given it (``maas_backlog_s``, which stretches the aging clock as for any request).
    ``deadline_s`` bounds the whole generation, ``first_token_deadline_s`` its first token.
    """
    queue = model_queue(model)
    args: list[Any] = [model, send_version, prompt, params]
    kwargs: dict[str, Any] = {"deadline_at": now + deadline_s} if deadline_s else {}
    if first_token_deadline_s:
        kwargs["first_token_deadline_at"] = now + first_token_deadline_s
    headers: dict[str, Any] = {"maas_submitted_at": now, "maas_class": request_class}
    if policy is not None:
        headers["maas_policy"] = str(policy)
        headers["maas_backlog_s"] = round(backlog_s, 6)
    ledger_body = {
        "name": GENERATE_TASK,
        "queue": queue,
        "priority": priority,
        "args": args,
        "kwargs": kwargs,
        "headers": headers,
    }
    message = celery_message(GENERATE_TASK, task_id, args, kwargs, headers, queue, priority)
    admission = Admission(queue, model, task_id, now, ledger_body, max_queue, None, message, priority)
    return InferOrder(task_id, model, queue, priority, args, kwargs, headers, admission, task=GENERATE_TASK)
