"""The gateway's view of the fleet: admission of OIP requests and the database reads behind metadata.

Requests are admitted exactly as the Python client admits them: the same resolution, signature check and
scheduling decision (:meth:`app.client.Client.prepare`, run in a thread because it may read the database when its
few-second caches expire), the same admission script, then the message is pushed onto the model's priority list
with this process's asyncio Redis client. The answer arrives through :mod:`gateway.results`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from sqlalchemy import select

from app import logs, outage, registry
from app.admission import InferOrder
from app.broker import layout, scripts, stats
from app.client import Client
from app.db import replicas as replica_rows
from app.db.schema import Model, ModelVersion
from app.db.session import session_scope
from app.errors import AdmissionNotReplicated, BrokerUnavailable, UnknownModel
from app.lifecycle import ReplicaState

log = logging.getLogger("maas.gateway")

#: How long metadata and readiness read from the database are reused.
METADATA_CACHE_S = 2.0


@dataclass(frozen=True)
class Published:
    """A request on its queue: what it takes to take it back while nobody has started it."""

    order: InferOrder
    list_key: str
    raw: bytes


def ref_for(model: str, version: str | None) -> str:
    """OIP path parts -> a registry reference: ``/versions/3`` is ``model:3``, ``/versions/prod`` ``model@prod``."""
    layout.check_model_name(model)
    if version is None:
        return model
    return f"{model}:{version}" if version.isdigit() else f"{model}@{version}"


class Fleet:
    def __init__(self, client: Client, redis_client: redis.asyncio.Redis) -> None:
        self.client = client
        self.settings = client.settings
        self.redis = redis_client
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}

    # --- admission ----------------------------------------------------------------------------------------------
    async def publish(self, order: InferOrder) -> Published:
        """Admit (queue limit, ledger, aging index) and queue the message, in the client's one atomic call."""
        assert order.admission.message is not None  # infer_order always builds it
        published = Published(order, order.admission.list_key, order.admission.message)
        try:
            # Retried through a short Redis outage (the script writes nothing for a task id it already admitted).
            backlog = await outage.retrying_async(
                lambda: scripts.admit_async(self.redis, order.admission, self.client.settings),
                "queueing the request",
                attempts=self.settings.retry_attempts,
                max_s=self.settings.retry_max_s,
            )
        except AdmissionNotReplicated as exc:
            # Only the primary has it. Still queued: taken back and refused. Already taken by a worker: it runs
            # whatever we say, so it is accepted (a "not accepted" would invite a second run).
            try:
                refused = await self.take_back(published, "no Redis replica confirmed the admission")
            except (redis.ConnectionError, redis.TimeoutError):
                refused = True
            if refused:
                raise
            backlog = exc.backlog
        except BrokerUnavailable:
            # The call may have run before its reply was lost: take back what it may have written, so a request
            # the caller is told failed never runs later (by a worker, or by the ledger's resend).
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                await self.take_back(published, "admission failed on a Redis error")
            raise
        self.client.scheduler.admit(order.model, backlog)
        return published

    async def take_back(self, published: Published, why: str) -> bool:
        """Remove a request nobody will read from its queue if no worker has taken it yet; True if it was there."""
        order = published.order
        removed = await scripts.take_back_async(
            self.redis, published.list_key, published.raw, order.model, order.task_id
        )
        if removed:
            logs.event(log, "request_withdrawn", model=order.model, task_id=order.task_id, reason=why)
        return removed

    async def count_refusal(self, model: str, version: str, code: str) -> None:
        """A request the gateway refused before it reached a queue still counts as a failure of its model."""
        try:
            await stats.count_failure_async(self.redis, model, version, code)
        except (redis.ConnectionError, redis.TimeoutError):
            # The refusal itself is what the caller gets; a lost count is not worth a second error.
            log.warning("refusal not counted", exc_info=True, extra={"model": model, "code": code})

    # --- reads --------------------------------------------------------------------------------------------------
    async def _cached(self, key: tuple[str, ...], read: Any) -> Any:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < METADATA_CACHE_S:
            return hit[1]
        value = await asyncio.to_thread(read)
        self._cache[key] = (time.monotonic(), value)
        return value

    async def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        ref = ref_for(model, version)

        def read() -> dict[str, Any]:
            with session_scope(self.settings.sqlalchemy_url) as session:
                row = registry.resolve(session, ref)
                versions = [v.version for v in row.model.versions]
                return {
                    "name": model,
                    "version": row.version,
                    "versions": versions,
                    "runtime": row.runtime,
                    "inputs": row.inputs,
                    "outputs": row.outputs,
                }

        result: dict[str, Any] = await self._cached(("meta", ref), read)
        return result

    async def ready(self, model: str, version: str | None) -> bool:
        """A version is ready when a READY replica holds it (a model without one waits for scale from zero)."""
        ref = ref_for(model, version)

        def read() -> bool:
            with session_scope(self.settings.sqlalchemy_url) as session:
                row = registry.resolve(session, ref)
                live = replica_rows.live_for_model(session, row.model_id)
                explicit = version is not None
                return any(
                    r.state == ReplicaState.READY.value and (not explicit or r.version_id == row.id) for r in live
                )

        result: bool = await self._cached(("ready", ref), read)
        return result

    async def index(self, ready_only: bool) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            out = []
            with session_scope(self.settings.sqlalchemy_url) as session:
                for model in session.scalars(select(Model).order_by(Model.name)):
                    live = replica_rows.live_for_model(session, model.id)
                    by_version: dict[int, set[str]] = {}
                    for r in live:
                        by_version.setdefault(r.version.version, set()).add(r.state)
                    for v in session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)):
                        states = by_version.get(v.version, set())
                        state = _index_state(states)
                        if ready_only and state != "READY":
                            continue
                        reason = "" if states else "no replica: loads on the first request or `load`"
                        out.append({"name": model.name, "version": str(v.version), "state": state, "reason": reason})
            return out

        return await asyncio.to_thread(read)

    def ping_database(self) -> None:
        with session_scope(self.settings.sqlalchemy_url) as session:
            session.execute(select(1))

    def invalidate(self, model: str) -> None:
        """Forget cached reads about ``model`` (after a load or unload made through this gateway)."""
        for key in [k for k in self._cache if len(k) > 1 and k[1].split(":")[0].split("@")[0] == model]:
            del self._cache[key]
        self.client.scheduler.invalidate(model)

    async def check_model(self, model: str) -> None:
        def read() -> None:
            with session_scope(self.settings.sqlalchemy_url) as session:
                registry.get_model(session, model)

        try:
            await self._cached(("model", model), read)
        except UnknownModel:
            self._cache.pop(("model", model), None)
            raise


def _index_state(states: set[str]) -> str:
    if ReplicaState.READY.value in states:
        return "READY"
    if states & {ReplicaState.PENDING.value, ReplicaState.LOADING.value}:
        return "LOADING"
    if states & {ReplicaState.DRAINING.value, ReplicaState.UNLOADING.value}:
        return "UNLOADING"
    return "UNAVAILABLE"
