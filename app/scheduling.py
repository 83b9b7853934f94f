"""Choosing each request's priority level from the scheduling policy, and refusing work past a queue's limit.

Per model (cached for ``CACHE_S`` seconds, so the hot path stays off the database; ``Scheduler.invalidate`` drops
the cache at once): its policy (the fleet's unless the model overrides it), backlog limit, declared service time
and replica count; a service-time estimator fed by the workers' observations. Per request: one pipelined read of
the queue's ten priority lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from sqlalchemy import select

from app import outage, policies
from app.broker import demand
from app.broker.keys import ALLOCATION_TRIGGER
from app.db import replicas as replica_rows
from app.db.schema import Model, ModelVersion
from app.db.session import session_scope
from app.errors import UnknownPolicy
from app.lifecycle import ReplicaState
from app.service_time import ServiceTimeEstimator, device_class
from app.settings import Settings

#: How long per-model facts are reused before they are read again.
CACHE_S = 5.0


@dataclass(frozen=True)
class ModelFacts:
    policy: policies.Policy
    max_queue: int
    max_request_bytes: int
    declared_s: float
    replicas: int
    device_classes: tuple[str, ...]
    read_at: float


@dataclass(frozen=True)
class Decision:
    policy: policies.Policy
    priority: int
    estimated_s: float
    backlog: int
    backlog_s: float


class Scheduler:
    def __init__(self, settings: Settings, client: redis.Redis, trigger: Callable[[], object] | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.trigger = trigger  # sends an allocation request; None in tools that must not start one
        self._facts: dict[str, ModelFacts] = {}
        self._estimators: dict[str, tuple[float, ServiceTimeEstimator]] = {}
        self._backlog: dict[str, int] = {}  # model -> queue depth read with the last submission
        self._mean_s: dict[str, float] = {}  # model -> moving average of its requests' estimated service
        #: Size bands and the aging clock scale with the fleet's typical service time.
        self.params = settings.policy_params()

    def invalidate(self, model: str | None = None) -> None:
        """Forget what is cached about ``model`` (every model when None); the next use reads it afresh.

        Cached: the model's facts (policy, queue limit, declared service time, READY replicas) and its service-time
        estimator (built from the workers' observations). Both expire by themselves after ``CACHE_S`` seconds; call
        this after changing a model's settings (``registry.configure``, as ``maas model set`` does) or registering a
        version through the same process, so that its next request is decided with them rather than with what was
        read before. It only clears this process's caches: other producers see the change within ``CACHE_S``.
        The backlog and moving-average figures are kept, as they are measurements rather than cached settings.
        """
        if model is None:
            self._facts.clear()
            self._estimators.clear()
        else:
            self._facts.pop(model, None)
            self._estimators.pop(model, None)

    def facts(self, model: str) -> ModelFacts:
        cached = self._facts.get(model)
        if cached is not None and time.monotonic() - cached.read_at < CACHE_S:
            return cached
        try:
            fresh = self._read_facts(model)
        except outage.DATABASE_ERRORS as exc:
            if cached is not None:
                return cached  # stale-if-error: the database is away, the last facts read still hold
            error = outage.typed(exc, f"reading the serving settings of {model!r}")
            assert error is not None
            raise error from exc
        self._facts[model] = fresh
        return fresh

    def _read_facts(self, model: str) -> ModelFacts:
        with session_scope(self.settings.sqlalchemy_url) as session:
            row = session.scalars(select(Model).where(Model.name == model)).one()
            latest = session.scalars(
                select(ModelVersion).where(ModelVersion.model_id == row.id).order_by(ModelVersion.version.desc())
            ).first()
            live = [r for r in replica_rows.live_for_model(session, row.id) if r.state == ReplicaState.READY]
            classes = {device_class(r.device.kind, r.device.name) for r in live} or {"virtual"}
            fresh = ModelFacts(
                policy=policies.parse_policy(row.policy or self.settings.policy),
                max_queue=row.max_queue or self.settings.max_queue,
                max_request_bytes=row.max_request_bytes or self.settings.max_request_bytes,
                declared_s=(latest.service_ms if latest else 1.0) / 1000.0,
                replicas=len(live),
                device_classes=tuple(sorted(classes)),
                read_at=time.monotonic(),
            )
        return fresh

    def _scale_from_zero(self, model: str) -> None:
        """Ask for an allocation run now rather than at the next period; at most one request per period."""
        if not self.settings.allocation_enabled or self.trigger is None:
            return
        if self.redis.set(ALLOCATION_TRIGGER, model, nx=True, ex=max(1, int(self.settings.allocation_period_s))):
            self.trigger()

    def estimate_s(self, model: str, size: float) -> float:
        facts = self.facts(model)
        cached = self._estimators.get(model)
        if cached is None or time.monotonic() - cached[0] >= CACHE_S:
            est = demand.estimator(self.redis, model, facts.declared_s, facts.device_classes)
            self._estimators[model] = cached = (time.monotonic(), est)
        est = cached[1]
        return min(est.estimate((model, c), size) for c in facts.device_classes)

    def estimate_tokens_s(self, model: str, tokens: int) -> float:
        """A generation's service time: learned from observed generations (their size is their tokens) where
        there are some, else the declared time (``service_ms``, per token for a generative model) per token."""
        facts = self.facts(model)
        self.estimate_s(model, tokens)  # refreshes the cached estimator
        est = self._estimators[model][1]
        learned = [est.estimate((model, c), tokens) for c in facts.device_classes if est.observations((model, c)) > 0]
        return min(learned) if learned else facts.declared_s * tokens

    def decide(
        self,
        model: str,
        *,
        request_class: str,
        size: float,
        priority: int | None,
        remaining_s: float | None = None,
        estimated_s: float | None = None,
    ) -> Decision:
        """The level to enqueue at. No I/O: the backlog is the one read with the previous submission."""
        facts = self.facts(model)
        if facts.replicas == 0:
            self._scale_from_zero(model)
        backlog = self._backlog.get(model, 0)
        if estimated_s is None:
            estimated_s = self.estimate_s(model, size)
        # The wait FIFO would give it: the work queued ahead, sized by what this model's requests take on average
        # (not by this request's own size), over the replicas serving it.
        mean_s = self._mean_s[model] = 0.95 * self._mean_s.get(model, estimated_s) + 0.05 * estimated_s
        backlog_s = backlog * mean_s / max(1, facts.replicas)
        if priority is None:
            try:
                request = policies.RequestFacts(request_class, estimated_s, remaining_s, 0.0, backlog_s)
                priority = policies.priority_for(facts.policy, request, self.params)
            except ValueError as exc:
                raise UnknownPolicy(str(exc)) from exc
        return Decision(facts.policy, priority, estimated_s, backlog, backlog_s)

    def admit(self, model: str, backlog: int) -> None:
        """Record the backlog read with this submission (for the next one's backlog estimate)."""
        self._backlog[model] = backlog
