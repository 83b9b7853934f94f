"""The producer side: what applications call. ``load``, ``infer`` and ``stop`` each return a handle to wait on.

Requests are validated against the version's signature before they are sent, so a bad tensor never occupies a
queue. The infer hot path does not touch the database: resolved references are cached for a few seconds.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import redis
from celery import Celery
from celery import states as celery_states
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from sqlalchemy import select

from app import outage as outage_errors
from app import registry, signing
from app.admission import INFER_TASK, InferOrder, generate_order, infer_order
from app.broker import clients, dlq, scripts, streams
from app.celery_app import create_app
from app.control import Control, StopOrder, device_views
from app.db import devices as device_rows
from app.db import replicas
from app.db.schema import Device, ModelVersion, Replica, ReplicaEvent
from app.db.session import session_scope
from app.errors import (
    AdmissionNotReplicated,
    BrokerUnavailable,
    Cancelled,
    InvalidInput,
    InvalidPriority,
    MaasError,
    MalformedMessage,
    RequestTimeout,
    RequestTooLarge,
    UnknownPolicy,
    from_code,
)
from app.generation import SamplingParams, check_prompt, parse_params
from app.jobs import Jobs, split
from app.lifecycle import TERMINAL
from app.placement import DeviceView
from app.scheduling import Scheduler
from app.settings import Settings
from app.signature import (
    TensorSpec,
    as_data_lists,
    decode_tensor,
    encode_tensor,
    parse_signature,
    rows_of,
    validate_inputs,
)

log = logging.getLogger("maas.client")
T = TypeVar("T")

#: Request classes the policies know (interactive work goes ahead of batch work of the same size).
REQUEST_CLASSES = ("interactive", "batch")
#: How long a resolved reference (name -> version and signature) is reused before the registry is asked again.
REF_CACHE_S = 5.0
#: A reference used stale (database away) is logged at most once per this many seconds.
STALE_WARN_S = 10.0
#: A wait for a result is made of slices this long, so that an outage met in one is retried within the timeout.
WAIT_SLICE_S = 5.0


#: Pause before waiting again for a result after the Redis connection was lost.


@dataclass
class Handle:
    """A request in flight. ``wait()`` returns its result or raises the MaasError it ended with."""

    result: AsyncResult | None
    timeout_s: float
    done_value: Any = None
    then: AsyncResult | None = field(default=None)  # a follow-up task the caller also waits for (unload)
    withdraw: Callable[[], bool] | None = field(default=None, repr=False)  # infer: takes it back if still queued

    @property
    def id(self) -> str | None:
        return self.result.id if self.result is not None else None

    def ready(self) -> bool:
        return self.result is None or self.result.ready()

    def cancel(self) -> bool:
        """Cancel a request no worker has taken yet: it leaves its queue and the ledger, never runs, and is answered
        CANCELLED (so every waiter learns). Returns False when a worker already has it: it then runs to the end,
        and its answer is stored as usual. (A timeout in ``wait`` only stops waiting; it cancels nothing.)"""
        return self.withdraw() if self.withdraw is not None else False

    def wait(self, timeout_s: float | None = None) -> Any:
        if self.result is None:
            return self.done_value
        timeout = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout
        value = self._get(self.result, deadline, timeout)
        if self.then is not None and value.get("state") not in [s.value for s in TERMINAL]:
            value = self._get(self.then, time.monotonic() + timeout, timeout)
        return value

    @staticmethod
    def _get(result: AsyncResult, deadline: float, timeout_s: float) -> Any:
        """The result, waiting at most until ``deadline`` even across a Redis restart.

        Waits in slices: a slice that meets a broken connection is retried after a backoff (Celery's result consumer
        reconnects and reads any result stored meanwhile), so a Redis that comes back before the deadline still
        delivers the answer, and one that does not ends in BROKER_UNAVAILABLE at the deadline, not minutes later.
        """
        attempt, outage = 0, None
        while True:
            if outage is not None:
                # Celery's result consumer gives up reconnecting after a few tries and is left without a channel;
                # subscribe again (each get() also reads a result stored meanwhile, so none is missed).
                with contextlib.suppress(*outage_errors.BROKER_ERRORS):
                    result.backend.result_consumer.consume_from(result.id)
            left = deadline - time.monotonic()
            if left <= 0:
                if outage is not None:
                    raise BrokerUnavailable(
                        f"no answer to {result.id} within {timeout_s:g}s: Redis did not answer "
                        f"({type(outage).__name__}: {outage})"
                    ) from outage
                raise RequestTimeout(f"no answer to {result.id} within {timeout_s:g}s")
            try:
                return result.get(timeout=min(left, WAIT_SLICE_S), propagate=True, disable_sync_subtasks=False)
            except CeleryTimeout:
                outage = None  # Redis answered: the result is simply not there yet
            except MaasError:
                raise  # the worker's error, rebuilt by Celery from JSON
            except Exception as exc:
                # A broken connection, or Celery's "retry limit exceeded" RuntimeError raised from one.
                cause = exc if isinstance(exc, outage_errors.BROKER_ERRORS) else exc.__cause__
                if not isinstance(cause, outage_errors.BROKER_ERRORS):
                    raise MaasError(f"{type(exc).__name__}: {exc}") from exc
                stored = getattr(result, "_cache", None)  # the final meta Celery read (a success returns next turn)
                if (
                    stored is not None
                    and stored.get("status") in celery_states.PROPAGATE_STATES
                    and isinstance(stored.get("result"), outage_errors.BROKER_ERRORS)
                ):
                    # The stored answer is a worker's outage error, not this read's: reading it again until the
                    # deadline would only hold the caller.
                    raise BrokerUnavailable(f"request {result.id} failed on its worker: {exc}") from exc
                if outage is None:
                    log.warning(
                        "Redis did not answer while waiting; retrying until the timeout",
                        extra={"task_id": result.id, "error": repr(cause)},
                    )
                outage = cause
                time.sleep(min(max(0.0, deadline - time.monotonic()), outage_errors.backoff(attempt)))
                attempt += 1


class Generation:
    """A generation in flight. Iterating yields its text chunks as the worker makes them, then ends; a failed or
    cancelled generation raises its MaasError (after the chunks made before). ``text``, ``finish_reason`` and
    ``usage`` are filled as it goes."""

    def __init__(
        self,
        task_id: str,
        client: redis.Redis,
        timeout_s: float,
        signing_key: str,
        *,
        retry_attempts: int = 1,
        retry_max_s: float = 0.0,
    ) -> None:
        self.id = task_id
        self._redis = client
        self._timeout_s = timeout_s
        self._reader = streams.Reader(task_id, signing_key)
        self._after = "0"  # the last entry read: a read retried after an outage resumes after it
        self._retry_attempts = retry_attempts
        self._retry_max_s = retry_max_s

    @property
    def text(self) -> str:
        return self._reader.text

    @property
    def finish_reason(self) -> str | None:
        return self._reader.finish_reason

    @property
    def usage(self) -> dict[str, int]:
        return self._reader.usage

    def __iter__(self) -> Iterator[str]:
        quiet_since = time.monotonic()
        while not self._reader.done:
            # A short outage (a restart, a failover) is read through, as the gateway reads it: the stream survives
            # it, and the read starts again after the last entry read, so no text is repeated or skipped. Past the
            # retry budget it is BROKER_UNAVAILABLE. Each retried read is one XREAD: safe to repeat.
            entries = outage_errors.retrying(
                partial(streams.read, self._redis, self.id, self._after, block_ms=500),
                f"streaming generation {self.id}",
                attempts=self._retry_attempts,
                max_s=self._retry_max_s,
            )
            if entries:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > self._timeout_s:
                raise RequestTimeout(f"no text from {self.id} for {self._timeout_s:g}s")
            for entry_id, entry in entries:
                self._after = entry_id
                new = self._reader.feed(entry)
                if new:
                    yield new
        if self._reader.error is not None:
            raise from_code(*self._reader.error)

    def result(self) -> str:
        """Wait for the whole text."""
        for _ in self:
            pass
        return self.text

    def cancel(self) -> None:
        """Ask the worker to stop; it does at its next token step, and the iterator then raises Cancelled."""
        streams.cancel(self._redis, self.id)


def is_generative(resolved: Resolved) -> bool:
    """Whether a version has the generative signature (one BYTES ``prompt`` in, one BYTES ``text`` out)."""
    return [(s.name, s.datatype) for s in resolved.inputs] == [("prompt", "BYTES")] and [
        s.name for s in resolved.outputs
    ] == ["text"]


@dataclass(frozen=True)
class Resolved:
    model: str
    version: int
    send_version: int | None  # None: serve with whichever version the replicas hold
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    expires_at: float


class Client:
    def __init__(self, settings: Settings | None = None, app: Celery | None = None, requester: str = "") -> None:
        self.settings = settings or Settings.from_env()
        if not self.settings.signing_key:
            signing.warn_unsigned("client")  # once per process: results it reads are not checked
        self.app = app or create_app(self.settings)
        self._refs: dict[str, Resolved] = {}
        self._stale_warned: dict[str, float] = {}  # ref -> when its stale use was last logged
        #: Who this client's loads and stops are recorded as asked by (``maas history`` shows it).
        self.requester = requester or f"user {current_user()} via client"
        self._redis = clients.for_settings(self.settings)
        self.control = Control(self.app)
        self.scheduler = Scheduler(self.settings, self._redis, trigger=self.control.request_allocation)
        self.jobs = Jobs(self.settings, self.app, self._redis)

    @property
    def redis(self) -> redis.Redis:
        """This client's Redis connection pool (the process's one for its URL)."""
        return self._redis

    @property
    def _url(self) -> str:
        return self.settings.sqlalchemy_url

    # --- inference ----------------------------------------------------------------------------------------------
    def infer(
        self,
        ref: str,
        inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, Any]],
        *,
        priority: int | None = None,
        request_class: str = "interactive",
        deadline_s: float | None = None,
        timeout_s: float | None = None,
    ) -> Handle:
        """Queue one request; ``inputs`` are numpy arrays by name, or OIP tensor dicts.

        Without an explicit ``priority`` the scheduling policy picks the level. A request still waiting
        ``deadline_s`` after submission is never executed and ends with DEADLINE_EXCEEDED.
        """
        resolved = self._resolve(ref)
        if isinstance(inputs, Mapping):
            tensors = [encode_tensor(name, np.asarray(a)) for name, a in inputs.items()]
        elif isinstance(inputs, Sequence) and all(isinstance(t, Mapping) for t in inputs):
            tensors = [dict(t) for t in inputs]
        else:
            raise InvalidInput("inputs must be arrays by name, or a list of OIP tensor objects")
        validate_inputs(resolved.inputs, tensors)
        return self._send(self._order(resolved, tensors, priority, request_class, deadline_s), timeout_s)

    def replay(self, entry: Mapping[str, Any], *, timeout_s: float | None = None) -> Handle:
        """Admit a dead letter's request again, under its own task id, through the same checks as :meth:`infer`
        (registry, signature, queue limit). Refuses, with MALFORMED_MESSAGE, an entry that holds no readable
        request. The request's old answer (its dead-letter error) and delivery count are dropped first."""
        ident = entry.get("id") or entry.get("task_id")
        request = entry.get("request")
        task_id = entry.get("task_id")
        if entry.get("malformed") or not isinstance(request, dict) or not isinstance(task_id, str):
            raise MalformedMessage(f"dead letter {ident} holds no readable request (malformed message); not replayed")
        args = request.get("args")
        if request.get("name") != INFER_TASK or not isinstance(args, list) or len(args) != 3:
            raise MalformedMessage(f"dead letter {ident} is not an infer request; not replayed")
        model, version, tensors = args
        if not isinstance(model, str) or not isinstance(tensors, list):
            raise MalformedMessage(f"dead letter {ident} has no model name or inputs; not replayed")
        headers = request.get("headers")
        if not isinstance(headers, dict):
            headers = {}
        resolved = self._resolve(model if version is None else f"{model}:{version}")
        validate_inputs(resolved.inputs, tensors)
        request_class = headers.get("maas_class", "interactive")
        priority = request.get("priority")
        order = self._order(
            resolved,
            tensors,
            priority if isinstance(priority, int) else None,
            request_class if request_class in REQUEST_CLASSES else "interactive",
            None,
            task_id=task_id,
        )
        dlq.forget_answer(self._redis, task_id)
        # The first admission's ledger record may still be there; admission ignores a task id it already holds (so
        # a producer's retry is safe), which would drop the replay: take the old record back first.
        scripts.withdraw(self._redis, order.model, task_id, counted=False)
        return self._send(order, timeout_s)

    def prepare(
        self,
        ref: str,
        tensors: list[dict[str, Any]],
        *,
        priority: int | None = None,
        request_class: str = "interactive",
        deadline_s: float | None = None,
    ) -> InferOrder:
        """Resolve, check and schedule one request without sending it (what every front door sends)."""
        resolved = self._resolve(ref)
        validate_inputs(resolved.inputs, tensors)
        return self._order(resolved, tensors, priority, request_class, deadline_s)

    def _order(
        self,
        resolved: Resolved,
        tensors: list[dict[str, Any]],
        priority: int | None,
        request_class: str,
        deadline_s: float | None,
        remaining_s: float | None = None,
        task_id: str | None = None,
    ) -> InferOrder:
        if request_class not in REQUEST_CLASSES:
            raise UnknownPolicy(f"request class {request_class!r} is not one of {', '.join(REQUEST_CLASSES)}")
        if deadline_s is not None and not (isinstance(deadline_s, int | float) and deadline_s > 0):
            raise InvalidInput(f"deadline_s={deadline_s!r} must be a positive number of seconds")
        decision = self.scheduler.decide(
            resolved.model,
            request_class=request_class,
            size=rows_of(tensors),
            priority=None if priority is None else self._priority(priority),
            remaining_s=remaining_s,
        )
        return infer_order(
            task_id=task_id or str(uuid.uuid4()),
            model=resolved.model,
            send_version=resolved.send_version,
            tensors=tensors,
            policy=decision.policy,
            priority=decision.priority,
            estimated_s=decision.estimated_s,
            backlog_s=decision.backlog_s,
            request_class=request_class,
            deadline_s=deadline_s,
            max_queue=self.scheduler.facts(resolved.model).max_queue,
            now=time.time(),
        )

    def _send(self, order: InferOrder, timeout_s: float | None) -> Handle:
        # Subscribe to the result first, as send_task does, so an answer that comes at once is not missed.
        self.retry(lambda: self.app.backend.on_task_call(None, order.task_id), "subscribing to the result")
        backlog = self._admit(order)
        self.scheduler.admit(order.model, backlog)
        return Handle(
            AsyncResult(order.task_id, app=self.app),
            timeout_s or self.settings.infer_timeout_s,
            withdraw=lambda: self._cancel(order),
        )

    def _admit(self, order: InferOrder) -> int:
        """Size check, then the atomic admission (retried through a short outage); returns the backlog ahead."""
        admission = order.admission
        size = len(admission.message or b"")
        limit = self.scheduler.facts(order.model).max_request_bytes
        if size > limit:
            raise RequestTooLarge(
                f"the request is {size} bytes, over {order.model!r}'s limit of {limit} "
                "(MAAS_MAX_REQUEST_BYTES, or `maas model set --max-request-bytes`); nothing was sent"
            )
        # One atomic Redis call checks the queue's limit and, only when there is room, records the request in the
        # ledger (and the aging index), counts the arrival and queues the message: a refused request leaves nothing.
        try:
            # Retrying is safe: the script writes nothing for a task id it already admitted.
            backlog = self.retry(lambda: scripts.admit(self._redis, admission, self.settings), "queueing the request")
        except AdmissionNotReplicated as exc:
            # Only the primary has it. Taken back while still queued: refused, nothing runs. Already taken by a
            # worker: it runs whatever we say, so telling the caller "not accepted" would invite a second run.
            try:
                taken_back = scripts.take_back(
                    self._redis, admission.list_key, admission.message or b"", order.model, order.task_id
                )
            except (redis.ConnectionError, redis.TimeoutError):
                taken_back = True  # cannot tell now: refuse, as for any admission Redis did not confirm
            if taken_back:
                raise BrokerUnavailable(f"{exc.message}; {order.task_id} was not sent") from exc
            return exc.backlog
        except BrokerUnavailable as exc:
            # The last try may have run before its reply was lost: take back whatever it wrote, so the request
            # never runs later (by a worker, or by the ledger's resend) for a caller who was told it failed.
            self._take_back(order)
            raise BrokerUnavailable(f"{exc.message}; {order.task_id} was not sent") from exc
        return int(backlog)

    def _take_back(self, order: InferOrder) -> bool:
        """Best effort after a failed admission: remove the message and the ledger's record if they were written."""
        admission = order.admission
        try:
            if scripts.take_back(self._redis, admission.list_key, admission.message or b"", order.model, order.task_id):
                return True
            # Not queued (never written, or a worker has it): the ledger's record goes all the same, and the arrival
            # count stays, since whether the admission ran is not known.
            scripts.withdraw(self._redis, order.model, order.task_id, counted=False)
            return False
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # nothing written can be found now; the ledger's record ages out unanswered

    def _cancel(self, order: InferOrder) -> bool:
        admission = order.admission
        if not scripts.take_back(self._redis, admission.list_key, admission.message or b"", order.model, order.task_id):
            return False  # a worker has it (or it was answered): it runs to the end, and the ledger keeps it
        self.app.backend.mark_as_failure(
            order.task_id, Cancelled(f"request {order.task_id} was cancelled by its client before it ran")
        )
        return True

    # --- generation -------------------------------------------------------------------------------------------------
    def generate(
        self,
        ref: str,
        prompt: str,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        priority: int | None = None,
        request_class: str = "interactive",
        deadline_s: float | None = None,
        timeout_s: float | None = None,
        first_token_deadline_s: float | None = None,
    ) -> Generation:
        """Queue one generation of a generative model; iterate the returned object for text chunks as they come.

        ``temperature`` 0 is greedy; otherwise tokens are sampled with nucleus ``top_p`` and ``seed``. ``stop``
        strings end the text before them. ``timeout_s`` bounds the wait for each next chunk, not the whole text.
        ``deadline_s`` (after submission) bounds the whole generation and ``first_token_deadline_s`` its first
        token: past either, it stops with DEADLINE_EXCEEDED (after the text made before, on the stream).
        """
        raw: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        if stop:
            raw["stop"] = [stop] if isinstance(stop, str) else list(stop)
        order = self.prepare_generation(
            ref,
            prompt,
            parse_params(raw),
            priority=priority,
            request_class=request_class,
            deadline_s=deadline_s,
            first_token_deadline_s=first_token_deadline_s,
        )
        backlog = self._admit(order)
        self.scheduler.admit(order.model, backlog)
        timeout_s = timeout_s or self.settings.infer_timeout_s
        return Generation(
            order.task_id,
            self._redis,
            timeout_s,
            self.settings.signing_key,
            retry_attempts=self.settings.retry_attempts,
            retry_max_s=self.settings.retry_max_s,
        )

    def prepare_generation(
        self,
        ref: str,
        prompt: str,
        params: SamplingParams,
        *,
        priority: int | None = None,
        request_class: str = "interactive",
        deadline_s: float | None = None,
        first_token_deadline_s: float | None = None,
    ) -> InferOrder:
        """Resolve, check and schedule one generation without sending it (the gateway admits it itself)."""
        resolved = self._resolve(ref)
        if not is_generative(resolved):
            raise InvalidInput(f"{ref} is not a generative model (its inputs: {[s.name for s in resolved.inputs]})")
        check_prompt(prompt)
        if request_class not in REQUEST_CLASSES:
            raise UnknownPolicy(f"request class {request_class!r} is not one of {', '.join(REQUEST_CLASSES)}")
        for name, value in (("deadline_s", deadline_s), ("first_token_deadline_s", first_token_deadline_s)):
            if value is not None and not value > 0:
                raise InvalidInput(f"{name}={value!r} must be a positive number of seconds")
        decision = self.scheduler.decide(
            resolved.model,
            request_class=request_class,
            size=params.max_tokens,
            priority=None if priority is None else self._priority(priority),
            estimated_s=self.scheduler.estimate_tokens_s(resolved.model, params.max_tokens),
        )
        return generate_order(
            task_id=str(uuid.uuid4()),
            model=resolved.model,
            send_version=resolved.send_version,
            prompt=prompt,
            params=params.to_json(),
            priority=decision.priority,
            request_class=request_class,
            deadline_s=deadline_s,
            max_queue=self.scheduler.facts(resolved.model).max_queue,
            now=time.time(),
            first_token_deadline_s=first_token_deadline_s,
            policy=decision.policy,
            backlog_s=decision.backlog_s,
        )

    def submit_job(
        self,
        ref: str,
        inputs: Mapping[str, np.ndarray],
        *,
        chunk_rows: int,
        request_class: str = "batch",
        max_attempts: int = 3,
        parallelism: int = 1,
    ) -> str:
        """Split ``inputs`` into chunks of ``chunk_rows`` rows and run them as a job; returns the job id."""
        resolved = self._resolve(ref)
        chunks = split(inputs, chunk_rows)
        for tensors in (chunks[0], chunks[-1]):
            validate_inputs(resolved.inputs, tensors)
        if request_class not in REQUEST_CLASSES:
            raise UnknownPolicy(f"request class {request_class!r} is not one of {', '.join(REQUEST_CLASSES)}")
        chunk_s = self.scheduler.estimate_s(resolved.model, chunk_rows)
        return self.jobs.submit(
            resolved.model,
            resolved.send_version,
            chunks,
            chunk_s,
            request_class=request_class,
            max_attempts=max_attempts,
            parallelism=parallelism,
        )

    def _priority(self, priority: int | None) -> int:
        if priority is None:
            return self.settings.default_priority
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            raise InvalidPriority(f"priority {priority!r} must be an integer from 0 (highest) to 9 (lowest)")
        return priority

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` with this client's bounded retry of Redis and database outages (app.outage)."""
        return outage_errors.retrying(fn, what, attempts=self.settings.retry_attempts, max_s=self.settings.retry_max_s)

    def resolve(self, ref: str) -> Resolved:
        """The version ``ref`` names and its signature (cached for a few seconds: the hot path)."""
        return self._resolve(ref)

    def _resolve(self, ref: str) -> Resolved:
        """The cached reference while fresh; else the registry's answer. Stale-if-error: while the database does
        not answer, a reference resolved before is used as it was (a never-seen one is DATABASE_UNAVAILABLE after
        the bounded retry), so submissions go on through a database outage."""
        cached = self._refs.get(ref)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached
        parsed = registry.parse_ref(ref)
        try:
            resolved = self._lookup(parsed)
        except outage_errors.DATABASE_ERRORS as exc:
            if cached is not None:
                if time.monotonic() - self._stale_warned.get(ref, -STALE_WARN_S) >= STALE_WARN_S:
                    self._stale_warned[ref] = time.monotonic()
                    log.warning(
                        "database unavailable; using the cached reference",
                        extra={"ref": ref, "error": type(exc).__name__},
                    )
                return cached
            resolved = self.retry(lambda: self._lookup(parsed), f"resolving {ref!r}")
        self._refs[ref] = resolved
        return resolved

    def _lookup(self, parsed: registry.Ref) -> Resolved:
        with session_scope(self._url) as session:
            version = registry.resolve(session, parsed)
            explicit = parsed.version is not None or parsed.alias is not None
            return Resolved(
                parsed.model,
                version.version,
                version.version if explicit else None,
                parse_signature(version.inputs),
                parse_signature(version.outputs),
                time.monotonic() + REF_CACHE_S,
            )

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def load(self, ref: str, *, worker: str | None = None, device: int | None = None) -> Handle:
        """Place a replica of ``ref`` (on a named worker or device, else the one with most free memory) and load it."""
        with outage_errors.typed_errors(f"loading {ref!r}"):  # not retried: the load may already have been sent
            order = self.control.load(ref, worker=worker, device=device, requested_by=self.requester)
        if order.sent is None:
            return Handle(None, 0, done_value=order.summary)
        return Handle(order.sent, self.settings.load_timeout_s)

    def stop(self, ref: str, *, worker: str | None = None) -> list[Handle]:
        """Drain and unload the live replicas of ``ref`` (all of them, or the one on ``worker``)."""
        with outage_errors.typed_errors(f"stopping {ref!r}"):  # not retried: a drain may already have been sent
            orders = self.control.stop(ref, worker=worker, requested_by=self.requester)
        return [self._stop_handle(order) for order in orders]

    def _stop_handle(self, order: StopOrder) -> Handle:
        return Handle(order.drain, self.settings.load_timeout_s, then=order.unload)

    # --- views ----------------------------------------------------------------------------------------------------
    def replicas(self, include_terminal: bool = False) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with session_scope(self._url) as session:
                return [replicas.summary(r) for r in replicas.all_with_devices(session, include_terminal)]

        return self.retry(read, "reading the replicas")

    def devices(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with session_scope(self._url) as session:
                views = {v.worker_name: v for v in device_views(session, self.settings.heartbeat_timeout_s)}
                return [_device(d, views[d.worker_name]) for d in device_rows.all_devices(session)]

        return self.retry(read, "reading the devices")

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every lifecycle transition of every replica of ``model``, oldest first."""
        return self.retry(lambda: self._history(model), f"reading the history of {model!r}")

    def _history(self, model: str) -> list[dict[str, Any]]:
        with session_scope(self._url) as session:
            m = registry.get_model(session, model)
            rows = session.execute(
                select(ReplicaEvent, Replica, ModelVersion, Device)
                .join(Replica, ReplicaEvent.replica_id == Replica.id)
                .join(ModelVersion, Replica.version_id == ModelVersion.id)
                .join(Device, Replica.device_id == Device.id)
                .where(ModelVersion.model_id == m.id)
                .order_by(ReplicaEvent.at, ReplicaEvent.id)
            ).all()
            return [
                {
                    "at": e.at.isoformat(),
                    "replica": r.id,
                    "version": v.version,
                    "worker": d.worker_name,
                    "from": e.from_state,
                    "to": e.to_state,
                    "reason": e.reason,
                    "by": e.requested_by,
                }
                for e, r, v, d in rows
            ]


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def outputs_as_arrays(answer: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """An infer answer's OIP output tensors as numpy arrays by name."""
    return {t["name"]: decode_tensor(t) for t in answer["outputs"]}


def with_data_lists(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The answer with every output tensor as an OIP ``data`` list (for people and JSON tools), not ``raw``."""
    return {**answer, "outputs": as_data_lists(answer["outputs"])}


def _device(d: Device, view: DeviceView) -> dict[str, Any]:
    return {
        "worker": d.worker_name,
        "host": d.host,
        "index": d.index,
        "name": d.name,
        "kind": d.kind,
        "label": d.label,
        "mem_bytes": d.mem_bytes,
        "used_bytes": view.used_bytes,
        "alive": view.alive,
        "status": d.status,
        "heartbeat_at": d.heartbeat_at.isoformat(),
    }
