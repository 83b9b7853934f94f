"""Token streaming: one Redis Stream per generation request, written by the worker, read by the caller.

Entries (all fields are strings):

- ``{"k": "text", "o": offset, "x": text}``: new text, starting at character ``o`` of the generation's text. A
  redelivered request (its worker died) streams again from offset 0 and makes the same text (greedy, or sampled
  with the request's seed), so a reader keeps only what lies past what it already has: no chunk twice.
- ``{"k": "end", "r": finish reason, "u": JSON usage}``: the last entry of a generation that finished.
- ``{"k": "error", "c": code, "m": message}``: the last entry of a generation that failed.
- ``{"k": "wait"}``: a keep-alive, no text: the generation is waiting in its worker's engine (not yet admitted, or
  preempted). Readers give up after a quiet spell (``MAAS_INFER_TIMEOUT_S``), so the worker writes one for each
  such sequence every ``MAAS_GEN_KEEPALIVE_S``; it is signed like the others, so it proves the worker, not a
  forger, still holds the generation.

With a fleet key (``MAAS_SIGNING_KEY``) every entry also carries ``s``, its HMAC bound to the request's id
(:func:`app.signing.sign_stream_entry`), and a :class:`Reader` given the key refuses an entry without a valid one
(``FORGED_MESSAGE``).

Each stream is trimmed to about ``MAXLEN`` entries and expires ``ttl_s`` after its last write, so an abandoned one
goes by itself. Cancelling sets a key with a TTL that the worker reads at its next token step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio

from app import signing
from app.broker.keys import generation_cancel, generation_stream
from app.broker.layout import text
from app.errors import ForgedMessage

#: Entries kept per stream (approximate trimming); far more than any reader lags behind.
MAXLEN = 10_000
#: Default lifetime of a stream after its last entry, and of a cancel mark.
TTL_S = 3600


def text_entry(offset: int, chunk: str) -> dict[str, str]:
    return {"k": "text", "o": str(offset), "x": chunk}


def wait_entry() -> dict[str, str]:
    return {"k": "wait"}


def end_entry(finish_reason: str, usage: dict[str, int]) -> dict[str, str]:
    return {"k": "end", "r": finish_reason, "u": json.dumps(usage)}


def error_entry(code: str, message: str) -> dict[str, str]:
    return {"k": "error", "c": code, "m": message}


def add(pipe: redis.client.Pipeline, task_id: str, entry: dict[str, str], signing_key: str, ttl_s: int = TTL_S) -> None:
    """Queue one entry, signed under ``signing_key`` when there is one, on ``pipe`` (the worker sends one pipeline
    per token step, for all its sequences)."""
    key = generation_stream(task_id)
    signed = signing.sign_stream_entry(signing_key, task_id, entry)
    pipe.xadd(key, signed, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
    pipe.expire(key, ttl_s)


def decode(fields: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in fields.items()}


def read(client: redis.Redis, task_id: str, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
    """Entries after the id ``after`` ("0" for all), waiting up to ``block_ms`` for the first."""
    reply: Any = client.xread({generation_stream(task_id): after}, block=block_ms, count=256)
    return [(text(i), decode(f)) for _key, entries in reply or [] for i, f in entries]


async def read_async(
    client: redis.asyncio.Redis, task_id: str, after: str, block_ms: int
) -> list[tuple[str, dict[str, str]]]:
    reply: Any = await client.xread({generation_stream(task_id): after}, block=block_ms, count=256)
    return [(text(i), decode(f)) for _key, entries in reply or [] for i, f in entries]


def has_text(client: redis.Redis, task_id: str, signing_key: str, scan: int = 64) -> bool:
    """Whether the stream holds a (validly signed) text entry among its first ``scan``: a resent generation's first
    token was already streamed by an earlier run. Keep-alive entries come at most every few seconds, so the first
    text entry of a stream is well within the first ``scan``."""
    entries: Any = client.xrange(generation_stream(task_id), count=scan)
    for _id, fields in entries or []:
        entry = decode(fields)
        if entry.get("k") != "text":
            continue
        try:
            signing.check_stream_entry(signing_key, task_id, entry)
        except ForgedMessage:
            continue  # a forged entry proves nothing
        return True
    return False


def cancel(client: redis.Redis, task_id: str, ttl_s: int = TTL_S) -> None:
    client.set(generation_cancel(task_id), 1, ex=ttl_s)


async def cancel_async(client: redis.asyncio.Redis, task_id: str, ttl_s: int = TTL_S) -> None:
    await client.set(generation_cancel(task_id), 1, ex=ttl_s)


def cancelled(client: redis.Redis, task_ids: Iterable[str]) -> set[str]:
    """Which of these generations their callers cancelled (one round trip)."""
    ids = list(task_ids)
    if not ids:
        return set()
    marks = client.mget([generation_cancel(i) for i in ids])
    return {i for i, mark in zip(ids, marks, strict=True) if mark is not None}


class Reader:
    """Turns one request's stream entries into new text, skipping what a redelivered run streams again. With a
    ``signing_key``, an entry without its valid signature raises ForgedMessage (and nothing of it is believed)."""

    def __init__(self, task_id: str, signing_key: str) -> None:
        self.task_id = task_id
        self.signing_key = signing_key
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.error: tuple[str, str] | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def feed(self, entry: dict[str, str]) -> str:
        """The text this entry adds (maybe empty); sets ``finish_reason``/``usage`` or ``error`` at the end."""
        signing.check_stream_entry(self.signing_key, self.task_id, entry)
        kind = entry.get("k")
        if kind == "text":
            offset, chunk = int(entry["o"]), entry["x"]
            new = chunk[max(0, len(self.text) - offset) :] if offset <= len(self.text) else ""
            self.text += new
            return new
        if kind == "wait":
            return ""  # proof of life only: the reader's quiet clock restarts (it saw an entry), no text
        if kind == "end":
            self.finish_reason, self.usage = entry["r"], json.loads(entry.get("u") or "{}")
        elif kind == "error":
            self.error = (entry.get("c", "MAAS_ERROR"), entry.get("m", ""))
        return ""
