"""Poison messages on the consumer's path: what kombu and Celery cannot read is dead-lettered, never retried.

Two places see a message before any task does:

- kombu's Redis channel pops it (BRPOP) and parses it as JSON. Bytes that are not a JSON object of kombu's shape
  would raise out of the worker's event loop and stop the worker; :class:`Channel` checks them first and
  dead-letters them instead. They are already out of the list, so nothing requeues them.
- Celery's consumer reads the headers and the body. A message without a task name or an id (nothing to answer
  under), with a body it cannot decode, or one it refuses (pickle) is acknowledged and dropped by Celery;
  :class:`Consumer` records it as a dead letter first. A message with an id naming a task this worker does not
  have is answered MALFORMED_MESSAGE under that id.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json

from app import logs
from app.broker import dlq
from app.errors import MalformedMessage
from workers import context

log = logging.getLogger("maas.worker")


def _dead_letter(queue: str, reason: str, raw: Any) -> None:
    """Record an unanswerable message; never raises (a failed record must not stop the consumer)."""
    try:
        if not isinstance(raw, bytes | str):
            raw = json.dumps(raw, default=repr)
        letter = dlq.record_malformed(context.current().redis, queue, reason, raw)
    except Exception as exc:  # the worker keeps consuming whatever Redis says
        logs.event(log, "dead_letter_failed", logging.ERROR, queue=queue, reason=reason, exc_info=exc)
        return
    logs.event(log, "message_dead_lettered", logging.ERROR, queue=queue, dead_letter=letter, reason=reason)


def kombu_shape_error(item: Any) -> str | None:
    """Why ``item`` (a popped list entry, parsed) is not a Celery message kombu can take; None when it is one.

    Checked here rather than left to kombu and Celery: past this point, an exception from a malformed message
    escapes the consumer with the message recorded as unacknowledged, to be delivered again and again."""
    if not isinstance(item, dict):
        return f"not a JSON object but {type(item).__name__}"
    properties = item.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "properties.delivery_info is not an object"
    headers = item.get("headers")
    if not isinstance(headers, dict):
        return "headers is not an object"
    if not isinstance(headers.get("id"), str) or not isinstance(headers.get("task"), str):
        return "no task name or no id in the headers"
    return _body_error(item, properties)


def _body_error(item: dict[str, Any], properties: dict[str, Any]) -> str | None:
    """Why a JSON message's body is not Celery's [args, kwargs, options]; None when it is, or not JSON at all."""
    body = item.get("body", "")
    if not isinstance(body, str):
        return "body is not a string"
    if properties.get("body_encoding") == "base64":
        try:
            decoded = base64.b64decode(body, validate=True)
        except ValueError:
            return "body is not base64"
    else:
        decoded = body.encode()
    if item.get("content-type") != "application/json":
        return None  # Celery refuses any other content type itself (pickle: "untrusted content"), unread
    try:
        payload = json.loads(decoded)
    except ValueError:
        return "body is not JSON"
    if not (isinstance(payload, list) and len(payload) == 3 and isinstance(payload[0], list)):
        return "body is not [args, kwargs, options]"
    if not isinstance(payload[1], dict) or not isinstance(payload[2], dict | None):
        return "body is not [args, kwargs, options]"
    return None


def _id_in(item: Any) -> str | None:
    headers = item.get("headers") if isinstance(item, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def _answer(task_id: str | None, reason: str) -> None:
    """Store MALFORMED_MESSAGE under a readable id, so whoever sent it is not left waiting."""
    ctx = context.current()
    if task_id is None or ctx.app is None:
        return
    try:
        ctx.app.backend.mark_as_failure(task_id, MalformedMessage(reason))
    except Exception as exc:
        logs.event(log, "answer_failed", logging.ERROR, task_id=task_id, reason=reason, exc_info=exc)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, checking each popped message before kombu parses it."""

    def _brpop_read(self, **options: Any) -> Any:
        # kombu's own read pops and parses in one step; ours parses, checks, and hands a good message on the
        # same way (rotate the queue cycle, deliver to the consumer of that queue).
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise kombu_redis.Empty()
            key, raw = reply
            queue = (key.decode() if isinstance(key, bytes) else str(key)).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            problem: str | None
            try:
                item = kombu_json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            except ValueError as exc:
                item, problem = None, f"not JSON: {exc}"
            else:
                problem = kombu_shape_error(item)
            if problem is not None:
                reason = f"not a Celery message: {problem}"
                _dead_letter(queue, reason, raw)
                _answer(_id_in(item), reason)
                return True
            self.connection._deliver(item, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel` (``broker_transport`` of serving workers)."""

    Channel = Channel


def _queue_of(message: Any) -> str:
    info = getattr(message, "delivery_info", None) or {}
    return str(info.get("routing_key") or "?")


def _raw_of(message: Any) -> Any:
    raw = getattr(message, "_raw", None)
    return raw if raw is not None else {"headers": getattr(message, "headers", None), "body": repr(message.body)}


class Consumer(CeleryConsumer):
    """Celery's consumer, dead-lettering what it would drop and answering unknown tasks with a typed error."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        reason = f"the body cannot be decoded: {type(exc).__name__}: {exc}"
        _dead_letter(_queue_of(message), reason, _raw_of(message))
        _answer(_id_in({"headers": message.headers}), reason)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _dead_letter(_queue_of(message), "no task name in the message's headers", _raw_of(message))
        super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = f"not a valid task message: {type(exc).__name__}: {exc}"
        _dead_letter(_queue_of(message), reason, _raw_of(message))
        _answer(_id_in({"headers": message.headers}), reason)
        super().on_invalid_task(body, message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id, name = headers.get("id"), headers.get("task")
        if not isinstance(task_id, str):
            _dead_letter(_queue_of(message), f"unknown task {name!r:.80} and no id", _raw_of(message))
            message.reject_log_error(log, self.connection_errors)
            return
        message.reject_log_error(log, self.connection_errors)
        error = MalformedMessage(f"no task named {name!r:.80} runs on this fleet's workers")
        self.app.backend.mark_as_failure(task_id, error)
        logs.event(log, "request_failed", logging.WARNING, code=error.code, reason=error.message, task_id=task_id)
