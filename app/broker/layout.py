"""kombu's and Celery's layout in Redis, as this fleet uses it: queue names, priority lists, messages, results.

kombu's Redis transport keeps one list per queue and priority level, pops level 0 first across every queue a
worker consumes, and records a message it popped in the ``unacked`` hash until the task is acknowledged. Celery
stores a task's result under ``celery-task-meta-<id>``. This module is the only one that spells those names.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidModelName, MalformedMessage

#: Ten Redis priority levels, 0 the highest (the reverse of RabbitMQ). kombu keeps one list per level.
PRIORITY_LEVELS = tuple(range(10))
#: kombu joins queue and level with this; it must never appear in a queue name (celery#7633).
PRIORITY_SEP = ":"
#: Control messages (load, stop) jump ahead of every request.
CONTROL_PRIORITY = 0
#: Queue for fleet-wide periodic work sent by beat (reaping lost workers, allocation, aging, recovery).
SYSTEM_QUEUE = "maas.system"
#: Prefix of every model's infer queue.
MODEL_QUEUE_PREFIX = "m."
#: kombu's hash of messages popped but not yet acknowledged: delivery tag -> [message, exchange, routing key].
KOMBU_UNACKED = "unacked"
#: kombu's zset of the same delivery tags, scored by when they were taken (its visibility-timeout restore reads it).
KOMBU_UNACKED_INDEX = "unacked_index"
#: Celery's result key for a task id is this prefix plus the id.
RESULT_PREFIX = "celery-task-meta-"

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


def text(value: Any) -> str:
    """A Redis reply as text (our clients return bytes; a client made with decode_responses returns str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise InvalidModelName(
            f"model name {name!r} must be 1-100 characters of a-z, 0-9, '_', '.', '-' and start with a letter or digit"
        )
    return name


def model_queue(model: str) -> str:
    """The infer queue of a model: every replica of it consumes this one queue."""
    return f"{MODEL_QUEUE_PREFIX}{check_model_name(model)}"


def is_model_queue(queue: str) -> bool:
    return queue.startswith(MODEL_QUEUE_PREFIX)


def control_queue(worker_name: str) -> str:
    """The load/stop queue of one worker, so control never waits behind inference of other workers."""
    return f"ctl.{worker_name}"


def priority_lists(queue: str) -> list[str]:
    """The Redis lists of ``queue``, highest level first.

    kombu stores level 0 under the bare name and level p under ``<queue><sep><p>``.
    """
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_LEVELS]


def result_key(task_id: str) -> str:
    return RESULT_PREFIX + task_id


@dataclass(frozen=True)
class Envelope:
    """A Celery (protocol 2, JSON) message as kombu stores it in a Redis list."""

    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)


def decode(raw: bytes | str) -> Envelope:
    """Read one message from a priority list; raise MalformedMessage naming what is wrong."""
    try:
        message = json.loads(raw)
        headers = message["headers"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        task, task_id = headers["task"], headers["id"]
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedMessage(f"not a Celery protocol 2 JSON message: {type(exc).__name__}: {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(task_id, str):
        raise MalformedMessage("a Celery message needs a list of args, a dict of kwargs and a string id")
    return Envelope(task, task_id, args, kwargs, headers)


def task_id_of(raw: bytes | str) -> str | None:
    """The task id in a stored message's headers (not anywhere else in it), or None when it has none."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list) and message:  # an unacked entry: [message, exchange, routing key]
        message = message[0]
    headers = message.get("headers") if isinstance(message, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def task_ids_in(values: Iterable[bytes | str]) -> set[str]:
    """Task ids of stored messages (list entries or unacked entries), read from their headers only."""
    found = (task_id_of(v) for v in values)
    return {i for i in found if i is not None}


def celery_message(
    task: str,
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    headers: dict[str, Any],
    queue: str,
    priority: int,
) -> bytes:
    """A Celery protocol 2 JSON message as kombu's Redis transport stores it, for producers that publish with their
    own Redis client (the asyncio gateway) rather than through kombu. A worker cannot tell it from Celery's own.
    """
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    celery_headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "",  # Celery puts a repr of the args here for display; a tensor's repr is of no use
        "kwargsrepr": "",
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        **headers,
    }
    message = {
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": celery_headers,
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()
