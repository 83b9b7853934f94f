"""The producer side: what applications call. ``load``, ``infer`` and ``stop`` each return a handle to wait on.

Requests are validated against the version's signature before they are sent, so a bad tensor never occupies a
queue. The infer hot path does not touch the database: resolved references are cached for a few seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from sqlalchemy import select

from app import registry
from app.admission import InferOrder, generate_order, infer_order
from app.broker import clients, scripts, streams
from app.celery_app import create_app
from app.control import Control, StopOrder, device_views
from app.db import devices as device_rows
from app.db import replicas
from app.db.schema import Device, ModelVersion, Replica, ReplicaEvent
from app.db.session import session_scope
from app.errors import (
    BrokerUnavailable,
    InvalidInput,
    InvalidPriority,
    MaasError,
    RequestTimeout,
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

#: Request classes the policies know (interactive work goes ahead of batch work of the same size).
REQUEST_CLASSES = ("interactive", "batch")
#: How long a resolved reference (name -> version and signature) is reused before the registry is asked again.
REF_CACHE_S = 5.0


@dataclass
class Handle:
    """A request in flight. ``wait()`` returns its result or raises the MaasError it ended with."""

    result: AsyncResult | None
    timeout_s: float
    done_value: Any = None
    then: AsyncResult | None = field(default=None)  # a follow-up task the caller also waits for (unload)

    @property
    def id(self) -> str | None:
        return self.result.id if self.result is not None else None

    def ready(self) -> bool:
        return self.result is None or self.result.ready()

    def wait(self, timeout_s: float | None = None) -> Any:
        if self.result is None:
            return self.done_value
        timeout = timeout_s or self.timeout_s
        value = self._get(self.result, timeout)
        if self.then is not None and value.get("state") not in [s.value for s in TERMINAL]:
            value = self._get(self.then, timeout)
        return value

    @staticmethod
    def _get(result: AsyncResult, timeout_s: float) -> Any:
        try:
            return result.get(timeout=timeout_s, propagate=True, disable_sync_subtasks=False)
        except CeleryTimeout as exc:
            raise RequestTimeout(f"no answer to {result.id} within {timeout_s:g}s") from exc
        except MaasError:
            raise  # the worker's error, rebuilt by Celery from JSON
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailable(f"Redis did not answer while waiting for {result.id}: {exc}") from exc
        except Exception as exc:
            raise MaasError(f"{type(exc).__name__}: {exc}") from exc


class Generation:
    """A generation in flight. Iterating yields its text chunks as the worker makes them, then ends; a failed or
    cancelled generation raises its MaasError (after the chunks made before). ``text``, ``finish_reason`` and
    ``usage`` are filled as it goes."""

    def __init__(self, task_id: str, client: redis.Redis, timeout_s: float) -> None:
        self.id = task_id
        self._redis = client
        self._timeout_s = timeout_s
        self._reader = streams.Reader()
        self._after = "0"

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
            try:
                entries = streams.read(self._redis, self.id, self._after, block_ms=500)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise BrokerUnavailable(f"Redis did not answer while streaming {self.id}: {exc}") from exc
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
    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.app = app or create_app(self.settings)
        self._refs: dict[str, Resolved] = {}
        self._redis = clients.sync_client(self.settings.redis_url)
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
        tensors = (
            [encode_tensor(name, np.asarray(a)) for name, a in inputs.items()]
            if isinstance(inputs, Mapping)
            else [dict(t) for t in inputs]
        )
        validate_inputs(resolved.inputs, tensors)
        return self._send(self._order(resolved, tensors, priority, request_class, deadline_s), timeout_s)

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
    ) -> InferOrder:
        if request_class not in REQUEST_CLASSES:
            raise UnknownPolicy(f"request class {request_class!r} is not one of {', '.join(REQUEST_CLASSES)}")
        if deadline_s is not None and not deadline_s > 0:
            raise InvalidInput(f"deadline_s={deadline_s!r} must be a positive number of seconds")
        decision = self.scheduler.decide(
            resolved.model,
            request_class=request_class,
            size=rows_of(tensors),
            priority=None if priority is None else self._priority(priority),
            remaining_s=remaining_s,
        )
        return infer_order(
            task_id=str(uuid.uuid4()),
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
        self.app.backend.on_task_call(None, order.task_id)
        # One atomic Redis call checks the queue's limit and, only when there is room, records the request in the
        # ledger (and the aging index), counts the arrival and queues the message: a refused request leaves nothing.
        backlog = scripts.admit(self._redis, order.admission)
        self.scheduler.admit(order.model, backlog)
        return Handle(AsyncResult(order.task_id, app=self.app), timeout_s or self.settings.infer_timeout_s)

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
    ) -> Generation:
        """Queue one generation of a generative model; iterate the returned object for text chunks as they come.

        ``temperature`` 0 is greedy; otherwise tokens are sampled with nucleus ``top_p`` and ``seed``. ``stop``
        strings end the text before them. ``timeout_s`` bounds the wait for each next chunk, not the whole text.
        """
        raw: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        if stop:
            raw["stop"] = [stop] if isinstance(stop, str) else list(stop)
        order = self.prepare_generation(
            ref, prompt, parse_params(raw), priority=priority, request_class=request_class, deadline_s=deadline_s
        )
        backlog = scripts.admit(self._redis, order.admission)
        self.scheduler.admit(order.model, backlog)
        return Generation(order.task_id, self._redis, timeout_s or self.settings.infer_timeout_s)

    def prepare_generation(
        self,
        ref: str,
        prompt: str,
        params: SamplingParams,
        *,
        priority: int | None = None,
        request_class: str = "interactive",
        deadline_s: float | None = None,
    ) -> InferOrder:
        """Resolve, check and schedule one generation without sending it (the gateway admits it itself)."""
        resolved = self._resolve(ref)
        if not is_generative(resolved):
            raise InvalidInput(f"{ref} is not a generative model (its inputs: {[s.name for s in resolved.inputs]})")
        check_prompt(prompt)
        if request_class not in REQUEST_CLASSES:
            raise UnknownPolicy(f"request class {request_class!r} is not one of {', '.join(REQUEST_CLASSES)}")
        if deadline_s is not None and not deadline_s > 0:
            raise InvalidInput(f"deadline_s={deadline_s!r} must be a positive number of seconds")
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
        if not isinstance(priority, int) or not 0 <= priority <= 9:
            raise InvalidPriority(f"priority {priority!r} must be an integer from 0 (highest) to 9 (lowest)")
        return priority

    def resolve(self, ref: str) -> Resolved:
        """The version ``ref`` names and its signature (cached for a few seconds: the hot path)."""
        return self._resolve(ref)

    def _resolve(self, ref: str) -> Resolved:
        cached = self._refs.get(ref)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached
        parsed = registry.parse_ref(ref)
        with session_scope(self._url) as session:
            version = registry.resolve(session, parsed)
            explicit = parsed.version is not None or parsed.alias is not None
            resolved = Resolved(
                parsed.model,
                version.version,
                version.version if explicit else None,
                parse_signature(version.inputs),
                parse_signature(version.outputs),
                time.monotonic() + REF_CACHE_S,
            )
        self._refs[ref] = resolved
        return resolved

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def load(self, ref: str, *, worker: str | None = None, device: int | None = None) -> Handle:
        """Place a replica of ``ref`` (on a named worker or device, else the one with most free memory) and load it."""
        order = self.control.load(ref, worker=worker, device=device)
        if order.sent is None:
            return Handle(None, 0, done_value=order.summary)
        return Handle(order.sent, self.settings.load_timeout_s)

    def stop(self, ref: str, *, worker: str | None = None) -> list[Handle]:
        """Drain and unload the live replicas of ``ref`` (all of them, or the one on ``worker``)."""
        return [self._stop_handle(order) for order in self.control.stop(ref, worker=worker)]

    def _stop_handle(self, order: StopOrder) -> Handle:
        return Handle(order.drain, self.settings.load_timeout_s, then=order.unload)

    # --- views ----------------------------------------------------------------------------------------------------
    def replicas(self, include_terminal: bool = False) -> list[dict[str, Any]]:
        with session_scope(self._url) as session:
            return [replicas.summary(r) for r in replicas.all_with_devices(session, include_terminal)]

    def devices(self) -> list[dict[str, Any]]:
        with session_scope(self._url) as session:
            views = {v.worker_name: v for v in device_views(session, self.settings.heartbeat_timeout_s)}
            return [_device(d, views[d.worker_name]) for d in device_rows.all_devices(session)]

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every lifecycle transition of every replica of ``model``, oldest first."""
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
                }
                for e, r, v, d in rows
            ]


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
