"""OpenAI-compatible endpoints for generative models: ``POST /v1/completions``, ``POST /v1/chat/completions``
(both with ``stream: true`` as server-sent events ending in ``data: [DONE]``, or one JSON answer) and
``GET /v1/models``. Behind the gateway's API-key auth like every route, so the official ``openai`` client works
with ``base_url=<gateway>/v1`` and ``api_key=<one of MAAS_API_KEYS>``.

A request is admitted exactly as ``Client.generate`` admits one (same order, same atomic admission script), and
its text is read from the request's Redis Stream as the worker makes it. A client that goes away, streaming or
not, cancels its generation on the worker (at the next token step).

Three body fields of our own, named as ``Client.generate`` names them (the ``openai`` package sends them with
``extra_body``): ``priority`` (0 highest .. 9 lowest; absent: the model's policy decides), ``deadline_s`` (seconds
after submission the whole generation must end in) and ``first_token_deadline_s`` (seconds for its first token).
Past a deadline the worker stops the generation and the caller gets DEADLINE_EXCEEDED: a 504 when not streaming,
the stream's error event when streaming (after the text made before).

What is not supported is refused, not ignored: ``n`` > 1, ``best_of``, ``logprobs``, ``echo``, tools, and
several prompts in one request. Chat messages are joined with a plain ``role: content`` template (the gateway has
no tokenizer; a model's own chat template is not applied).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import orjson
import redis.asyncio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app import errors, outage, registry
from app.broker import streams
from app.db.session import session_scope
from app.errors import InvalidInput, InvalidPriority, MaasError
from app.generation import SamplingParams, parse_params
from app.settings import Settings

#: Fields we accept and ignore (they change nothing a caller can see here).
IGNORED = {"user", "frequency_penalty", "presence_penalty", "logit_bias", "suffix", "stream_options"}
UNSUPPORTED = {"best_of", "logprobs", "echo", "tools", "tool_choice", "functions", "top_logprobs", "response_format"}
#: Our own fields (beyond OpenAI's), with ``Client.generate``'s names; each is in seconds after submission.
DEADLINE_FIELDS = ("deadline_s", "first_token_deadline_s")


@dataclass(frozen=True)
class Scheduling:
    """How a request is queued and bounded; None: the model's policy (priority) or no bound (deadlines)."""

    priority: int | None = None
    deadline_s: float | None = None
    first_token_deadline_s: float | None = None


def scheduling(doc: dict[str, Any]) -> Scheduling:
    """Our own fields of a request body, checked here so a wrong one is refused naming it (a string compared to a
    number would otherwise be a bare TypeError, a 500, deep in the admission)."""
    priority = doc.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9):
        raise InvalidPriority(f"'priority' {priority!r} must be an integer from 0 (highest) to 9 (lowest)")
    deadlines: dict[str, float | None] = {}
    for name in DEADLINE_FIELDS:
        value = doc.get(name)
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0
        ):
            raise InvalidInput(f"'{name}' {value!r} must be a positive number of seconds")
        deadlines[name] = None if value is None else float(value)
    return Scheduling(priority, deadlines["deadline_s"], deadlines["first_token_deadline_s"])


def parse(doc: dict[str, Any], chat: bool) -> tuple[str, str, SamplingParams, bool]:
    """(model, prompt, params, stream) from an OpenAI request body; InvalidInput for what cannot be served."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' is required")
    used = sorted(k for k in UNSUPPORTED if doc.get(k) not in (None, False, 0))
    if used:
        raise InvalidInput(f"not supported here: {used}")
    if doc.get("n", 1) != 1:
        raise InvalidInput("only n=1 is supported")
    prompt = chat_prompt(doc.get("messages")) if chat else completion_prompt(doc.get("prompt"))
    raw: dict[str, Any] = {"temperature": doc.get("temperature", 1.0), "top_p": doc.get("top_p", 1.0)}
    max_tokens = doc.get("max_completion_tokens", doc.get("max_tokens")) if chat else doc.get("max_tokens")
    raw["max_tokens"] = 16 if max_tokens is None else max_tokens
    for key in ("seed", "stop"):
        if doc.get(key) is not None:
            raw[key] = doc[key]
    for key in ("temperature", "top_p"):
        if raw[key] is None:
            raw.pop(key)
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInput("'stream' must be true or false")
    return model, prompt, parse_params(raw), stream


def completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput("'prompt' must be one non-empty string")
    return prompt


def chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a non-empty list")
    lines = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidInput("each message needs a string 'role' and a string 'content'")
        lines.append(f"{m['role']}: {m['content']}")
    return "\n".join(lines) + "\nassistant:"


def error_body(error: MaasError) -> bytes:
    return orjson.dumps({"error": {"message": error.message, "type": error.code.lower(), "code": error.code}})


def openai_errors(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A route's typed errors in OpenAI's shape, with the gateway's status and ``X-Maas-Error-Code``: the
    ``openai`` package shows ``error.message`` in its exception, and would show nothing of ``{"error": "CODE: ..."}``
    (the OIP shape, which the gateway's handler gives what is raised before or around this, such as a bad key)."""

    async def wrapped(request: Request) -> Response:
        from gateway.server import error_response  # not at the top: the server imports this module

        try:
            return await fn(request)
        except MaasError as exc:
            oip_shaped = error_response(exc)  # its status and headers (the code, a 503's Retry-After); not its body
            headers = {k: v for k, v in oip_shaped.headers.items() if k in ("x-maas-error-code", "retry-after")}
            # The openai package retries any 5xx twice unless told not to: a passed deadline, a timeout or a model's
            # error would then run the generation three times. Only an overloaded or unreachable fleet (429, 503)
            # is worth its automatic retry.
            headers["x-should-retry"] = "true" if oip_shaped.status_code in (429, 503) else "false"
            return Response(error_body(exc), oip_shaped.status_code, headers, media_type="application/json")

    return wrapped


class OpenAI:
    """The ``/v1`` handlers; ``gw`` is the gateway (its client, its Redis, its settings)."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    async def models(self, request: Request) -> Response:
        def read() -> list[dict[str, Any]]:
            seen: dict[str, dict[str, Any]] = {}
            with session_scope(self.gw.settings.sqlalchemy_url) as session:
                for version, _aliases in registry.list_versions(session):
                    if version.runtime == "causal_lm":
                        created = int(version.created_at.timestamp()) if version.created_at else 0
                        seen[version.model.name] = {
                            "id": version.model.name,
                            "object": "model",
                            "created": created,
                            "owned_by": "maas",
                        }
            return list(seen.values())

        data = await asyncio.to_thread(read)
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def _serve(self, request: Request, chat: bool) -> Response:
        from gateway.server import _json_object, read_body

        doc = _json_object(await read_body(request, self.gw.settings.max_request_bytes))
        model, prompt, params, stream = parse(doc, chat)
        asked = scheduling(doc)
        order = await asyncio.to_thread(
            partial(
                self.gw.client.prepare_generation,
                model,
                prompt,
                params,
                priority=asked.priority,
                deadline_s=asked.deadline_s,
                first_token_deadline_s=asked.first_token_deadline_s,
            )
        )
        await self.gw.fleet.publish(order)
        created = int(time.time())
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{order.task_id}"
        reader = streams.Reader(order.task_id, self.gw.settings.signing_key)
        chunks = text_chunks(self.gw.fleet.redis, order.task_id, reader, self.gw.settings)
        if stream:
            return StreamingResponse(
                _events(chunks, reader, self.gw.fleet.redis, order.task_id, ident, created, model, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        await collect_unless_gone(request, chunks, reader, self.gw.fleet.redis, order.task_id)
        body = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [_choice(reader.text, reader.finish_reason, chat, final=True)],
            "usage": reader.usage,
        }
        return Response(orjson.dumps(body), media_type="application/json")


async def collect_unless_gone(
    request: Request, chunks: AsyncIterator[str], reader: streams.Reader, client: redis.asyncio.Redis, task_id: str
) -> None:
    """Read the whole generation; if the caller leaves first, cancel it on the worker and stop reading."""
    from gateway.server import _disconnected

    async def collect() -> None:
        async for _ in chunks:
            pass

    reading = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({reading, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not reading.done():
            reading.cancel()
        # Not only when the caller left: reading also ends early on a quiet spell (TIMEOUT), a forged entry
        # (FORGED_MESSAGE) or Redis staying down, and then the worker would go on generating for nobody.
        if not reader.done:
            await cancel_for_nobody(client, task_id)
    if reading.cancelled():
        raise errors.RequestTimeout("client disconnected; the generation was cancelled")
    reading.result()  # its MaasError, if it failed


async def cancel_for_nobody(client: redis.asyncio.Redis, task_id: str) -> None:
    """Ask the worker to stop a generation nobody will read. Shielded: Starlette cancels a response's scope when
    its client leaves, and anyio would cancel this await too. A Redis outage is swallowed: the caller is already
    answered (or gone), and a second, raw error would only hide the first."""
    with anyio.CancelScope(shield=True), suppress(*outage.BROKER_ERRORS):
        await streams.cancel_async(client, task_id)


async def text_chunks(
    client: redis.asyncio.Redis, task_id: str, reader: streams.Reader, settings: Settings
) -> AsyncIterator[str]:
    """New text of one generation as it comes; raises its MaasError, or TIMEOUT after ``infer_timeout_s`` of
    silence (keep-alive entries count as life), or BROKER_UNAVAILABLE once Redis stayed down for ``retry_max_s``.

    A read that meets a Redis error is retried from the last entry read: the stream survives a failover, and the
    reader skips nothing and repeats nothing."""
    after, quiet_since, quiet_s = "0", time.monotonic(), settings.infer_timeout_s
    while not reader.done:
        entries = await outage.retrying_async(
            partial(streams.read_async, client, task_id, after, block_ms=500),
            f"reading the stream of generation {task_id}",
            attempts=settings.retry_attempts,
            max_s=settings.retry_max_s,
        )
        if entries:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > quiet_s:
            raise errors.RequestTimeout(f"no text from the generation for {quiet_s:g}s")
        for entry_id, entry in entries:
            after = entry_id
            new = reader.feed(entry)
            if new:
                yield new
    if reader.error is not None:
        raise errors.from_code(*reader.error)


async def _events(
    chunks: AsyncIterator[str],
    reader: streams.Reader,
    client: redis.asyncio.Redis,
    task_id: str,
    ident: str,
    created: int,
    model: str,
    chat: bool,
) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any]) -> bytes:
        body = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    try:
        if chat:
            yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        async for text in chunks:
            yield event(_choice(text, None, chat, final=False))
        yield event(_choice("", reader.finish_reason, chat, final=False))
    except MaasError as exc:
        yield b"data: " + error_body(exc) + b"\n\n"
    finally:
        if not reader.done:  # the client went away (or the wait ran out): stop the work nobody will read
            await cancel_for_nobody(client, task_id)
    yield b"data: [DONE]\n\n"


def _choice(text: str, finish_reason: str | None, chat: bool, final: bool) -> dict[str, Any]:
    if not chat:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
    if final:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "finish_reason": finish_reason}
    return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish_reason}


def routes(
    gw: Any, handler: Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]
) -> list[Route]:
    api = OpenAI(gw)
    return [
        Route("/v1/completions", handler(openai_errors(api.completions)), methods=["POST"]),
        Route("/v1/chat/completions", handler(openai_errors(api.chat_completions)), methods=["POST"]),
        Route("/v1/models", handler(openai_errors(api.models))),
    ]
