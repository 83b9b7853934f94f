"""Triton's generate extension for generative models: ``POST /v2/models/{m}[/versions/{v}]/generate`` answers one
JSON object, ``.../generate_stream`` the same objects as server-sent events, one per chunk of text as the worker
makes it. Behind the gateway's API-key auth, with the OIP routes' error shape (``{"error": "CODE: message"}``,
404 for an unknown model, 400 for bad input), streamed or not: a request is checked whole before the stream opens.

Request: ``{"id": "..." (optional, echoed), "text_input": "...", "parameters": {...}}``. The sampling parameters
(``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``) may sit in ``parameters`` or at the top level (both
spellings are in use by Triton's backends); one named twice, or any other field, is refused rather than ignored.
``parameters.stream`` is accepted when it agrees with the route. The scheduling parameters are the ``/infer``
route's (:mod:`gateway.oip`), in ``parameters`` or at the top level too: Triton's ``priority`` (0 or absent: the
model's policy decides; 1 is the highest, level ``min(priority - 1, 9)``) and ``timeout`` (microseconds, 0 = none)
or our ``deadline_ms``, which bound the whole generation: past it the worker stops it with DEADLINE_EXCEEDED (a 504,
or the stream's last event after the text made before). Unlike OpenAI's API, ``temperature`` defaults to 0
(greedy), as ``Client.generate`` and ``maas generate`` do.

Answer: ``{"id" (when given), "model_name", "model_version", "text_output"}``; the whole text for ``generate``,
each new piece for ``generate_stream``, whose last event also has ``finish_reason`` (``stop``, ``length``) and
``usage``. An error after the stream opened is one last event ``{"error": "CODE: message"}``. A client that leaves
cancels its generation on the worker, as on the OpenAI routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.broker import streams
from app.errors import InvalidInput, MaasError
from app.generation import SamplingParams, parse_params
from gateway import oip
from gateway.fleet import ref_for
from gateway.openai_api import cancel_for_nobody, collect_unless_gone, text_chunks

#: Sampling parameters the extension's request may carry, in ``parameters`` or at the top level.
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop")
#: Scheduling parameters, read as the ``/infer`` route reads them, from ``parameters`` or the top level.
SCHEDULING_KEYS = ("priority", "timeout", "deadline_ms")


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str | None
    prompt: str
    params: SamplingParams
    level: int | None = None  # our 0-9 priority, None: the policy decides
    deadline_s: float | None = None


def parse_generate(doc: dict[str, Any], streaming: bool) -> GenerateRequest:
    """The request body of ``generate``/``generate_stream``; InvalidInput naming what is wrong."""
    unknown = sorted(set(doc) - {"id", "text_input", "parameters", *SAMPLING_KEYS, *SCHEDULING_KEYS})
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; a generate request has id, text_input and parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id={request_id!r} must be a string")
    prompt = doc.get("text_input")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput("text_input must be a non-empty string")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters must be a JSON object")
    stream = parameters.get("stream", streaming)
    if stream is not streaming:
        route = "generate_stream" if streaming else "generate"
        raise InvalidInput(f"parameters.stream={stream!r} contradicts the route {route}")
    top_level = {k: doc[k] for k in (*SAMPLING_KEYS, *SCHEDULING_KEYS) if k in doc}
    twice = sorted(set(top_level) & set(parameters))
    if twice:
        raise InvalidInput(f"{twice} given both at the top level and in parameters")
    given = top_level | parameters
    raw = {k: v for k, v in given.items() if k != "stream" and k not in SCHEDULING_KEYS}
    # oip's readers of the same fields (so the two routes agree); their errors say "parameters.<name>" either way.
    level, deadline_s = oip.level_of(given.get("priority")), oip.deadline_s_of(given)
    return GenerateRequest(request_id, prompt, parse_params(raw), level, deadline_s)


class GenerateExtension:
    """The ``/v2/.../generate`` handlers; ``gw`` is the gateway (its client, its Redis, its settings)."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw

    async def generate(self, request: Request) -> Response:
        return await self._serve(request, streaming=False)

    async def generate_stream(self, request: Request) -> Response:
        return await self._serve(request, streaming=True)

    async def _serve(self, request: Request, streaming: bool) -> Response:
        from gateway.server import _json_object, read_body

        ref = ref_for(request.path_params["model"], request.path_params.get("version"))
        parsed = parse_generate(_json_object(await read_body(request, self.gw.settings.max_request_bytes)), streaming)

        def prepare() -> tuple[str, Any]:
            resolved = self.gw.client.resolve(ref)  # the (cached) version, for model_version in each answer
            order = self.gw.client.prepare_generation(
                ref, parsed.prompt, parsed.params, priority=parsed.level, deadline_s=parsed.deadline_s
            )
            return str(resolved.version), order

        version, order = await asyncio.to_thread(prepare)
        await self.gw.fleet.publish(order)
        head: dict[str, Any] = {} if parsed.request_id is None else {"id": parsed.request_id}
        head |= {"model_name": request.path_params["model"], "model_version": version}
        redis_client = self.gw.fleet.redis
        reader = streams.Reader(order.task_id, self.gw.settings.signing_key)
        chunks = text_chunks(redis_client, order.task_id, reader, self.gw.settings)
        if streaming:
            return StreamingResponse(
                _events(chunks, reader, redis_client, order.task_id, head),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        await collect_unless_gone(request, chunks, reader, redis_client, order.task_id)
        body = head | {"text_output": reader.text, "finish_reason": reader.finish_reason, "usage": reader.usage}
        return Response(orjson.dumps(body), media_type="application/json")


async def _events(
    chunks: AsyncIterator[str], reader: streams.Reader, client: redis.asyncio.Redis, task_id: str, head: dict[str, Any]
) -> AsyncIterator[bytes]:
    def event(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    try:
        async for text in chunks:
            yield event(head | {"text_output": text})
        yield event(head | {"text_output": "", "finish_reason": reader.finish_reason, "usage": reader.usage})
    except MaasError as exc:
        yield event({"error": str(exc)})
    finally:
        if not reader.done:  # the client went away (or the wait ran out): stop the work nobody will read
            await cancel_for_nobody(client, task_id)


def routes(
    gw: Any, handler: Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]
) -> list[Route]:
    ext = GenerateExtension(gw)
    found = []
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        found.append(Route(f"{base}/generate", handler(ext.generate), methods=["POST"]))
        found.append(Route(f"{base}/generate_stream", handler(ext.generate_stream), methods=["POST"]))
    return found
