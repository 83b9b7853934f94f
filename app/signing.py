"""Signatures on what crosses Redis and would otherwise be believed as is: control orders, stored results and the
entries of a generation's token stream.

Anyone who can write to Redis can push a message onto a worker's control queue or overwrite a result key. With a
fleet key (``MAAS_SIGNING_KEY``), every ``maas.load``/``maas.drain``/``maas.unload`` message carries an
HMAC-SHA256 of its canonical JSON (task name, id, args, kwargs) in the ``maas_sig`` header, and every result
Celery stores carries an HMAC of its exact JSON text in a trailing ``maas_sig`` field. Workers refuse control
messages without a valid signature (they do nothing and log ``forged_message``); clients refuse results without
one (``FORGED_MESSAGE``). Each entry a worker appends to a generation's stream carries an HMAC of the request's id
and the entry's fields in its ``s`` field, and readers (client, CLI, gateway) refuse an entry without a valid one
with ``FORGED_MESSAGE``: the final result was signed, and the text streamed before it must be believed no less.
Infer requests are not signed (see README, "Limits and signing": the cost per request,
and a forged request can only ask for work the fleet would do for any client anyway).

What signing does not do: hide anything (messages and results are readable by whoever reads Redis), stop a
replay of a genuine message or result under its own id, or stop someone who can delete keys or flush Redis.

Without a key nothing is signed or checked, and the first process to notice says so once, loudly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from typing import Any

from celery.backends.redis import RedisBackend

from app import logs
from app.errors import ForgedMessage

log = logging.getLogger("maas.signing")

#: Header of a signed control message, and the trailing field of a signed result.
FIELD = "maas_sig"

_RESULT_SIG = re.compile(r',"' + FIELD + r'":"([0-9a-f]{64})"\}')
_RESULT_SIG_CHARS = len(f',"{FIELD}":"') + 64 + 2  # the signed tail's fixed length
_warned = False


def canonical(value: Any) -> bytes:
    """One spelling of a JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(key: str, payload: bytes) -> str:
    return hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()


def warn_unsigned(component: str) -> None:
    """Log once per process that this fleet runs without a signing key."""
    global _warned
    if _warned:
        return
    _warned = True
    logs.event(
        log,
        "signing_disabled",
        logging.WARNING,
        component=component,
        reason=(
            "MAAS_SIGNING_KEY is not set: control messages and results are not signed, so anyone who can write "
            "to Redis can unload models and forge answers. Set the same 32+ character key on every fleet process."
        ),
    )


# --- control messages -----------------------------------------------------------------------------------------------
def control_signature(key: str, task: str, task_id: str, args: Any, kwargs: Any) -> str:
    return digest(key, canonical([task, task_id, list(args or []), dict(kwargs or {})]))


def check_control(key: str, task: str, task_id: str, args: Any, kwargs: Any, signature: Any) -> None:
    """Raise ForgedMessage unless ``signature`` is this message's under ``key`` (no key: accept, warn once)."""
    if not key:
        warn_unsigned("worker")
        return
    if not isinstance(signature, str):
        raise ForgedMessage(f"{task}[{task_id}] carries no signature; refused, nothing done")
    if not hmac.compare_digest(control_signature(key, task, task_id, args, kwargs), signature):
        raise ForgedMessage(f"{task}[{task_id}] has a signature that does not match the fleet key; refused")


# --- results --------------------------------------------------------------------------------------------------------
def sign_result(key: str, payload: str) -> str:
    """A stored result's JSON text with its signature appended as the last field."""
    return f'{payload[:-1]},"{FIELD}":"{digest(key, payload.encode())}"}}'


def verify_result(key: str, payload: str) -> str:
    """The result's JSON text without its signature; raise ForgedMessage if the signature is missing or wrong."""
    found = _RESULT_SIG.fullmatch(payload[-_RESULT_SIG_CHARS:])  # the tail only: a result can be megabytes
    if found is None:
        raise ForgedMessage("the stored result carries no signature; refused")
    body = payload[:-_RESULT_SIG_CHARS] + "}"
    if not hmac.compare_digest(digest(key, body.encode()), found.group(1)):
        raise ForgedMessage("the stored result's signature does not match the fleet key; refused")
    return body


# --- stream entries -------------------------------------------------------------------------------------------------
#: The field of a stream entry that holds its signature.
STREAM_FIELD = "s"


def stream_entry_signature(key: str, task_id: str, entry: dict[str, str]) -> str:
    """The HMAC of one stream entry. The request id is signed with it, so a genuine entry copied into another
    request's stream is refused; the entry's own id is not (Redis assigns it), so a genuine entry replayed in its
    own stream is believed, which the reader's offsets make harmless (text already read is skipped)."""
    fields = {k: v for k, v in entry.items() if k != STREAM_FIELD}
    return digest(key, canonical([task_id, fields]))


def sign_stream_entry(key: str, task_id: str, entry: dict[str, str]) -> dict[str, str]:
    """The entry with its signature (no key: as it is)."""
    if not key:
        return entry
    return {**entry, STREAM_FIELD: stream_entry_signature(key, task_id, entry)}


def check_stream_entry(key: str, task_id: str, entry: dict[str, str]) -> None:
    """Raise ForgedMessage unless the entry carries its valid signature under ``key`` (no key: accept, warn once)."""
    if not key:
        warn_unsigned("stream reader")
        return
    signature = entry.get(STREAM_FIELD)
    if signature is None:
        raise ForgedMessage(f"an entry of the stream of {task_id} carries no signature; refused")
    if not hmac.compare_digest(stream_entry_signature(key, task_id, entry), signature):
        raise ForgedMessage(f"an entry of the stream of {task_id} has a signature that does not match the fleet key")


class SignedRedisBackend(RedisBackend):
    """Celery's Redis result backend, signing what it stores and checking what it reads under the fleet key."""

    def _key(self) -> str:
        settings = getattr(self.app, "maas_settings", None)
        return settings.signing_key if settings is not None else ""

    def encode(self, data: Any) -> Any:
        payload = super().encode(data)
        key = self._key()
        if key and isinstance(data, dict) and isinstance(payload, str) and payload.endswith("}"):
            return sign_result(key, payload)
        return payload

    def decode_result(self, payload: Any) -> Any:
        key = self._key()
        if not key or payload is None:
            return super().decode_result(payload)
        raw = payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)
        try:
            body = verify_result(key, raw)
        except ForgedMessage as exc:
            task_id = _task_id_in(raw)
            logs.event(log, "forged_result", logging.ERROR, task_id=task_id, reason=exc.message)
            return {"status": "FAILURE", "result": exc, "traceback": None, "children": [], "task_id": task_id}
        return super().decode_result(body)

    def _get_task_meta_for(self, task_id: str) -> Any:
        # A result read by id must be that task's: a genuine result copied under another id is refused.
        meta = super()._get_task_meta_for(task_id)
        found = meta.get("task_id") if isinstance(meta, dict) else None
        if self._key() and found is not None and found != task_id:
            error = ForgedMessage(f"the result stored under {task_id} is task {found}'s; refused")
            logs.event(log, "forged_result", logging.ERROR, task_id=task_id, reason=error.message)
            return {"status": "FAILURE", "result": error, "traceback": None, "children": [], "task_id": task_id}
        return meta


def _task_id_in(raw: str) -> str | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    task_id = value.get("task_id") if isinstance(value, dict) else None
    return task_id if isinstance(task_id, str) else None
