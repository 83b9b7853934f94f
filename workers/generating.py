"""Serving generation requests with continuous batching inside the worker.

The worker's solo pool runs one task at a time, so continuous batching happens inside one ``maas.generate`` task:
it starts an :class:`~workers.generation.Engine` with its own request, and at every token step takes more waiting
``maas.generate`` messages of the same model straight from the model's priority lists (highest level first, the
Lua take that dynamic batching uses) while the engine has free slots. Sequences join and leave between steps;
each one's text goes to its own Redis Stream as it is made (one pipeline per step for all of them), and each gets
its own result under its own task id the moment it finishes. The task returns once no sequence is left.

No request is lost, and each is answered once:

- The task's own message is acknowledged late (``task_acks_late``): only when the task returns. While it runs it
  is in kombu's ``unacked`` hash and recorded as held (``app.broker.holdings``); if the worker dies it goes back
  to its queue at once (reaper, or the worker's restart) under the same id.
- A message taken from the queue mid-generation is in no list and not unacknowledged. The request ledger still
  holds it, and the sweep resends a ledger entry found nowhere; so that a long generation is not resent while it
  runs, the worker marks the ledger entries of its running sequences as young every ``reap_period_s / 2``
  (``ledger.touch``). When the worker dies the touches stop, and the sweep resends them.
- A long generation must not outlive kombu's visibility timeout either (kombu would redeliver the message while
  it runs): the same period moves the own message's ``unacked_index`` score to now (``holdings.keep_alive``).
- Under ``srtf`` and ``aging`` a worker whose slots are all busy looks at the head of the model's queue at every
  step and takes a request out of turn (``queues.take``) only when the engine would preempt a running sequence for
  it; a preempted sequence stays in this worker (its tokens kept, its KV cache recomputed when it resumes), in
  ``running`` like any joined request, so the ledger touches above cover it and a worker that dies with it loses
  nothing. At most ``max_sequences`` such requests wait here, so a worker never hoards a queue.
- A request that comes back after a result was stored for it (a copy, or its worker died after storing it) is
  dropped (``ledger.answered``). A redelivered one streams again from offset 0, with the same seed, so makes the
  same text; the reader skips what it already has (``app.broker.streams.Reader``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from celery import Celery
from celery.exceptions import Ignore

from app import logs, outage, policies
from app.broker import holdings, layout, ledger, queues, scripts, stats, streams
from app.broker.layout import model_queue
from app.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    MaasError,
    MalformedMessage,
    ModelExecutionError,
    NotLoaded,
)
from app.generation import GENERATE_TASK, SamplingParams, check_prompt, parse_params
from app.policies import Policy, RequestClass
from workers.cache import Loaded
from workers.context import WorkerContext
from workers.runtimes.failures import translated
from workers.telemetry import device_class

log = logging.getLogger("maas.worker")
T = TypeVar("T")
#: How often a worker shows its running sequences and KV-cache bytes (the /metrics gauges).
LIVE_PERIOD_S = 0.5
#: Messages per priority level a busy worker looks at for one that would preempt (the queue's head: under SRTF
#: the shortest are at the highest levels, and deeper in a level they are only younger).
PEEK_PER_LEVEL = 8
#: Why a sequence stopped when the worker ended it for its deadline (the engine's finish reason).
DEADLINE = "deadline"


@dataclass
class Request:
    task_id: str
    model: str
    version: int | None
    prompt: Any
    params: Any  # the JSON parameters as sent; checked when the request starts
    deadline_at: float | None = None
    submitted_at: float | None = None
    first_token_deadline_at: float | None = None
    request_class: str = RequestClass.INTERACTIVE
    policy: str | None = None  # the model's policy when it was admitted
    backlog_s: float = 0.0
    started_at: float = 0.0
    last_token_at: float | None = None
    run_s: float | None = None  # seconds its sequence ran in the engine (set when it finished)
    streamed_at: float = 0.0  # monotonic: when its stream was last written (text or keep-alive)
    result: dict[str, Any] | None = None
    error: MaasError | None = None


def decode_message(raw: bytes) -> Request | None:
    """A ``maas.generate`` message taken from the queue; None (logged) when it is unreadable."""
    try:
        envelope = layout.decode(raw)
        if len(envelope.args) != 4:
            raise MalformedMessage(f"a generate message has args [model, version, prompt, params], got {envelope.args}")
    except MalformedMessage as exc:
        logs.event(log, "message_dropped", logging.ERROR, reason=exc.message, head=raw[:200].decode(errors="replace"))
        return None
    model, version, prompt, params = envelope.args
    return request_of(envelope.task_id, model, version, prompt, params, envelope.kwargs, envelope.headers.get)


def request_of(
    task_id: str,
    model: str,
    version: int | None,
    prompt: Any,
    params: Any,
    kwargs: dict[str, Any],
    header: Callable[[str], Any],
) -> Request:
    """A request from a message's arguments, keyword arguments and headers (``header(name)``, None when absent):
    the task's own message and those taken from the queue are read alike."""
    request_class = header("maas_class")
    policy = header("maas_policy")
    return Request(
        task_id,
        model,
        version,
        prompt,
        params,
        _number(kwargs.get("deadline_at")),
        _number(header("maas_submitted_at")),
        _number(kwargs.get("first_token_deadline_at")),
        str(request_class) if request_class in tuple(RequestClass) else RequestClass.INTERACTIVE,
        policy if isinstance(policy, str) else None,
        _number(header("maas_backlog_s")) or 0.0,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _policy(request: Request, fallback: Policy) -> Policy:
    """The policy the request was admitted under (its model's), else the fleet's; an unknown name is the
    fleet's too (a message from a newer producer must not stop a generation)."""
    try:
        return policies.parse_policy(request.policy or fallback)
    except ValueError:
        return fallback


def _through_outage(ctx: WorkerContext, what: str, call: Callable[[], T]) -> T:
    """``call()``, retried through a short Redis outage (a failover) for up to ``retry_max_s``: the sequences keep
    their state in the engine meanwhile, so a blip costs the batch a pause, not its work. Past that the error is
    BROKER_UNAVAILABLE and the task fails; nothing accepted is lost even then: the request ledger resends every
    request not answered (the own message once acknowledged, the joined ones once their touches stop). ``call``
    must be safe to repeat: reads, idempotent writes, or stream entries a reader skips when they come twice."""
    max_s = ctx.settings.retry_max_s
    return outage.retrying(call, what, attempts=outage.attempts_within(max_s), max_s=max_s)


def serve(app: Celery, ctx: WorkerContext, loaded: Loaded, own: Request) -> dict[str, Any]:
    """Generate ``own`` and every request that joins it; returns ``own``'s result or raises its error."""
    runtime: Any = loaded.runtime
    settings = ctx.settings
    running: dict[str, Request] = {}
    try:
        if not getattr(runtime, "generative", False):
            raise InvalidInput(f"model {loaded.model} ({runtime.name}) is not a generative model")
        engine = runtime.engine(
            max_sequences=settings.generation_max_sequences,
            max_kv_bytes=settings.generation_kv_bytes,
            policy=_policy(own, settings.policy),
            policy_params=settings.policy_params(),
        )
        _start(ctx, engine, loaded, own, running)
    except MaasError as exc:
        own.error = exc
        _publish(app, ctx, loaded, [own])  # its stream ends with the error too
        # Stored by _publish already: a second store would be dropped and counted as answered twice.
        raise Ignore() from exc
    try:
        return _loop(app, ctx, engine, loaded, own, running)
    finally:
        _show_live(ctx, loaded, 0, 0)


def _loop(
    app: Celery, ctx: WorkerContext, engine: Any, loaded: Loaded, own: Request, running: dict[str, Request]
) -> dict[str, Any]:
    client, settings = ctx.redis, ctx.settings
    queue = model_queue(loaded.model)
    tag: str | None = None
    period = settings.reap_period_s / 2
    alive_at = shown_at = time.monotonic()
    made = 0  # tokens since the gauges were last shown
    seen: dict[bytes, Candidate | None] = {}  # the queue's head as read, for the look at each busy step
    _show_live(ctx, loaded, len(running), 0)
    while engine.busy:
        free = engine.max_sequences - len(running)
        if free > 0:
            taken = _through_outage(
                ctx, "taking waiting generations", partial(scripts.take_batch, client, queue, free, GENERATE_TASK)
            )
            _join(app, ctx, engine, loaded, running, taken)
        elif engine.preemptive and len(running) < 2 * engine.max_sequences:
            _join(app, ctx, engine, loaded, running, _out_of_turn(ctx, engine, queue, running, seen))
        _expire(ctx, engine, running)
        tokens = _step(app, ctx, engine, loaded, running)
        if tokens is None:
            break
        made += tokens
        if time.monotonic() - shown_at > LIVE_PERIOD_S:
            elapsed_s, shown_at = time.monotonic() - shown_at, time.monotonic()
            _show_live(ctx, loaded, len(running), engine.kv_bytes, made / elapsed_s)
            made = 0
        if time.monotonic() - alive_at > period:
            alive_at = time.monotonic()
            # Redis failing over: try again next period; a period missed is well inside the sweep's and kombu's
            # margins (both wait several periods).
            with suppress(*outage.BROKER_ERRORS):
                ledger.touch(client, [i for i in running if i != own.task_id])
                tag = tag or holdings.delivery_tag(client, own.task_id)
                if tag is not None:
                    holdings.keep_alive(client, tag)
    # The own request's answer was stored by _publish the moment its sequence finished (so its caller is not held
    # until the whole batch drains); storing it again as the task's return value would be dropped and counted as
    # answered twice.
    assert own.result is not None or own.error is not None
    raise Ignore()


def _show_live(ctx: WorkerContext, loaded: Loaded, sequences: int, kv_bytes: int, tokens_per_s: float = 0.0) -> None:
    """The /metrics gauges; skipped while Redis does not answer (they are shown again in half a second)."""
    with suppress(*outage.BROKER_ERRORS):
        stats.set_live(ctx.redis, ctx.worker_name, loaded.model, sequences, kv_bytes, tokens_per_s)


@dataclass(frozen=True)
class Candidate:
    """A waiting request seen at the head of the queue, read once (its prompt tokenized) however often seen."""

    request: Request
    prompt_tokens: int
    max_tokens: int


def _candidate(engine: Any, raw: bytes) -> Candidate | None:
    request = decode_message(raw)
    if request is None:
        return None
    try:
        tokens = len(engine.tokenizer(check_prompt(request.prompt))["input_ids"])
        return Candidate(request, tokens, parse_params(request.params).max_tokens)
    except MaasError:
        return None  # a bad request is answered so when it is taken in its turn


def _out_of_turn(
    ctx: WorkerContext, engine: Any, queue: str, running: dict[str, Request], seen: dict[bytes, Candidate | None]
) -> list[bytes]:
    """The first waiting request at the head of the queue that would preempt a running sequence, taken from it.

    Every level's head is looked at, not only the highest level's: under aging an older request deeper down may
    rank first. What was read is kept (by the message's bytes) while it stays at the head, so each step costs one
    round trip and no parsing, and no more is kept than one look returns.
    """
    threshold = engine.place_threshold()
    if threshold is None:
        return []
    head = _through_outage(ctx, "looking at the queue's head", partial(queues.peek, ctx.redis, queue, PEEK_PER_LEVEL))
    at_head = {raw for _key, raw in head}
    for gone in [raw for raw in seen if raw not in at_head]:
        del seen[gone]
    for key, raw in head:
        if raw not in seen:
            seen[raw] = _candidate(engine, raw)
        found = seen[raw]
        if found is None or found.request.task_id in running:
            continue
        request = found.request
        submitted = request.submitted_at or time.time()
        rank = engine.rank_new(
            found.prompt_tokens, found.max_tokens, submitted, request.request_class, request.backlog_s
        )
        # Repeated after a lost reply, a take finds the message gone and says False: then it is in no list, and
        # the ledger resends it like any request whose worker lost it.
        if rank < threshold and _through_outage(
            ctx, "taking a request out of turn", partial(queues.take, ctx.redis, key, raw)
        ):
            return [raw]  # one per step: the next look sees the engine with it in
    return []


def _first_token_overdue(ctx: WorkerContext, request: Request, now: float) -> bool:
    """Whether ``request`` is past its first-token deadline without a first token. A resent generation (its worker
    died, kombu redelivered it, the ledger resent it) carries the deadline in its message while this run has made
    no token yet; if an earlier run already streamed text, the caller got its first token in time, so the deadline
    was met: it is cleared, and checked no more."""
    due = request.first_token_deadline_at
    if due is None or request.last_token_at is not None or now <= due:
        return False
    streamed = partial(streams.has_text, ctx.redis, request.task_id, ctx.settings.signing_key)
    if _through_outage(ctx, "reading a resent generation's stream", streamed):
        request.first_token_deadline_at = None
        return False
    return True


def _expire(ctx: WorkerContext, engine: Any, running: dict[str, Request]) -> None:
    """End the sequences past their deadline at this step boundary: past ``first_token_deadline_at`` without a
    token yet (waiting in the engine, or preempted before its first), or past ``deadline_at`` at all."""
    now = time.time()
    for task_id, request in running.items():
        if _first_token_overdue(ctx, request, now) or (request.deadline_at is not None and now > request.deadline_at):
            engine.cancel(task_id, DEADLINE)


def _step(app: Celery, ctx: WorkerContext, engine: Any, loaded: Loaded, running: dict[str, Request]) -> int | None:
    """One token step: cancellations, the engine's step, streaming, results; the tokens it made, or None when the
    model failed."""
    for task_id in _through_outage(ctx, "reading cancels", partial(streams.cancelled, ctx.redis, list(running))):
        engine.cancel(task_id)
    try:
        with translated("model raised", ModelExecutionError):
            events = engine.step()
    except MaasError as exc:
        for request in running.values():
            request.error = exc
        _publish(app, ctx, loaded, list(running.values()))
        return None
    made = _observe(ctx, loaded, running, events)
    chunks = []
    for event in events:
        request = running[event.sequence.id]
        if event.finished == "cancelled":
            request.error = Cancelled(f"the caller cancelled the generation after {len(event.sequence.text)} chars")
        elif event.finished == DEADLINE:
            which = "first token" if request.last_token_at is None else "whole generation"
            request.error = DeadlineExceeded(
                f"the deadline for the {which} passed after {len(event.sequence.generated)} tokens; stopped"
            )
        elif event.finished is not None:
            request.result = _result(loaded, ctx, request, event.sequence)
            request.run_s = event.sequence.run_s
        if event.text or event.finished:
            chunks.append((request, event.text, len(event.sequence.text) - len(event.text)))
    _stream(ctx, chunks, _quiet(ctx, running, {id(request) for request, _, _ in chunks}))
    done = [r for r in running.values() if r.result is not None or r.error is not None]
    _publish(app, ctx, loaded, done)
    for request in done:
        running.pop(request.task_id)
    return made


def _observe(ctx: WorkerContext, loaded: Loaded, running: dict[str, Request], events: list[Any]) -> int:
    """Time to first token (from submission), the gap since each sequence's previous token, tokens made."""
    now = time.time()
    ttft, itl = [], []
    made = 0
    for event in events:
        if event.finished in ("cancelled", DEADLINE):
            continue
        request = running[event.sequence.id]
        made += 1
        if request.last_token_at is None:
            ttft.append(max(0.0, now - (request.submitted_at or request.started_at)))
        else:
            itl.append(now - request.last_token_at)
        request.last_token_at = now
    ctx.stats.tokens(loaded.model, loaded.version, ttft_s=ttft, itl_s=itl, tokens=made)
    return made


def _start(ctx: WorkerContext, engine: Any, loaded: Loaded, request: Request, running: dict[str, Request]) -> None:
    """Check one request and add it to the engine; raise its MaasError when it cannot run."""
    if request.model != loaded.model or request.version not in (None, loaded.version):
        # As for a batched infer request: one taken for a version this replica does not hold is answered so.
        raise NotLoaded(f"{request.model}:{request.version} is not loaded; this replica serves {loaded.version}")
    now = time.time()
    if (request.deadline_at is not None and now > request.deadline_at) or _first_token_overdue(ctx, request, now):
        raise DeadlineExceeded("the deadline passed before the generation could start; not executed")
    params: SamplingParams = parse_params(request.params).seeded(request.task_id)
    request.started_at = now
    request.streamed_at = time.monotonic()  # a reader's quiet clock starts no earlier than this
    engine.add(
        request.task_id,
        check_prompt(request.prompt),
        params,
        submitted_at=request.submitted_at or now,
        request_class=request.request_class,
        backlog_s=request.backlog_s,
    )
    running[request.task_id] = request


def _join(
    app: Celery,
    ctx: WorkerContext,
    engine: Any,
    loaded: Loaded,
    running: dict[str, Request],
    raws: list[bytes],
) -> None:
    refused = []
    for raw in raws:
        request = decode_message(raw)
        if (
            request is None
            or request.task_id in running
            or _through_outage(ctx, "checking for an answer", partial(ledger.answered, ctx.redis, request.task_id))
        ):
            continue  # unreadable, or a copy of one running or answered
        try:
            _start(ctx, engine, loaded, request, running)
        except MaasError as exc:
            request.error = exc
            refused.append(request)
    _publish(app, ctx, loaded, refused)


def _quiet(ctx: WorkerContext, running: dict[str, Request], written: set[int]) -> list[Request]:
    """The running requests whose streams got nothing for ``generation_keepalive_s`` and nothing this step: those
    waiting in the engine (not admitted yet, or preempted). Their readers would otherwise take the silence for a
    dead worker and give up."""
    now = time.monotonic()
    return [
        request
        for request in running.values()
        if id(request) not in written
        and request.result is None
        and request.error is None
        and now - request.streamed_at >= ctx.settings.generation_keepalive_s
    ]


def _stream(ctx: WorkerContext, chunks: list[tuple[Request, str, int]], quiet: list[Request]) -> None:
    """One pipeline for the step: each sequence's new text, the end entry of those that finished, and a keep-alive
    for each ``quiet`` one."""
    if not chunks and not quiet:
        return
    ttl, key = int(ctx.settings.result_expires_s), ctx.settings.signing_key

    def send() -> None:
        # Built anew on each try: a pipeline that failed has dropped its commands. Entries sent twice are harmless
        # (readers keep only text past what they have, and stop at the first end).
        pipe = ctx.redis.pipeline(transaction=False)
        for request in quiet:
            streams.add(pipe, request.task_id, streams.wait_entry(), key, ttl)
        for request, text, offset in chunks:
            if text:
                streams.add(pipe, request.task_id, streams.text_entry(offset, text), key, ttl)
            if request.result is not None:
                end = streams.end_entry(request.result["finish_reason"], request.result["usage"])
                streams.add(pipe, request.task_id, end, key, ttl)
        pipe.execute()

    _through_outage(ctx, "streaming text", send)
    now = time.monotonic()
    for request in quiet + [request for request, _, _ in chunks]:
        request.streamed_at = now


def _publish(app: Celery, ctx: WorkerContext, loaded: Loaded, requests: list[Request]) -> None:
    """Store each finished request's result (or error) under its own id: its caller need not wait for the batch."""
    if not requests:
        return

    def send_errors() -> None:
        pipe = ctx.redis.pipeline(transaction=False)  # anew on each try, as in _stream
        for request in requests:
            if request.error is not None:
                error = streams.error_entry(request.error.code, request.error.message)
                streams.add(pipe, request.task_id, error, ctx.settings.signing_key, int(ctx.settings.result_expires_s))
        pipe.execute()

    _through_outage(ctx, "streaming errors", send_errors)
    now = time.time()
    for request in requests:
        if request.error is not None:
            logs.event(
                log,
                "request_failed",
                logging.WARNING,
                model=request.model,
                worker=ctx.worker_name,
                code=request.error.code,
                reason=request.error.message,
                task_id=request.task_id,
            )
            app.backend.mark_as_failure(request.task_id, request.error)
        else:
            app.backend.mark_as_done(request.task_id, request.result)
            tokens = (request.result or {}).get("usage", {}).get("completion_tokens", 0)
            if tokens:  # the service-time estimator learns seconds per token (a request's size is its max_tokens)
                # The time it ran in the engine, not since it started here: under SRTF and aging a sequence may
                # wait (not admitted yet, or preempted) much longer than it runs, and that is not its cost.
                ran_s = request.run_s if request.run_s is not None else now - request.started_at
                ctx.observations.add(loaded.model, device_class(ctx.device), tokens, ran_s)
        submitted = request.submitted_at or request.started_at or now
        ctx.stats.request(
            loaded.model,
            loaded.version,
            error_code=request.error.code if request.error is not None else None,
            rows=1,
            request_s=max(0.0, now - submitted),
            queue_s=max(0.0, (request.started_at or now) - submitted),
            compute_s=max(0.0, now - (request.started_at or now)),
        )


def _result(loaded: Loaded, ctx: WorkerContext, request: Request, sequence: Any) -> dict[str, Any]:
    first = sequence.first_token_at
    return {
        "model_name": loaded.model,
        "model_version": str(loaded.version),
        "text": sequence.text,
        "finish_reason": sequence.finish_reason,
        "usage": {
            "prompt_tokens": len(sequence.prompt_ids),
            "completion_tokens": len(sequence.generated),
            "total_tokens": len(sequence.prompt_ids) + len(sequence.generated),
        },
        "worker": ctx.worker_name,
        "time_to_first_token_s": None if first is None else round(first - sequence.enqueued_at, 6),
    }
