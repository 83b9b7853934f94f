"""Chunked batch jobs: many inputs for one model, served chunk by chunk.

Only one chunk per job (or ``parallelism``) waits in the model's queue at a time; the worker that finishes a
chunk sends the next with the priority of the job's *remaining* work. Under SRTF a short job therefore overtakes
a long one at the long job's next chunk boundary. Progress and results live in the database; a failing chunk
is retried up to ``max_attempts`` times, then reported, and the other chunks go on.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import policies
from app.broker import ledger
from app.broker.layout import model_queue
from app.db.schema import Job, JobChunk, Model, utcnow
from app.db.session import session_scope
from app.errors import InvalidInput, UnknownJob
from app.job_states import ChunkState, JobState
from app.settings import Settings
from app.signature import encode_tensor


def split(inputs: Mapping[str, np.ndarray], chunk_rows: int) -> list[list[dict[str, Any]]]:
    """Pure: cut every input along its first axis into chunks of ``chunk_rows`` rows, as OIP tensor lists."""
    if chunk_rows < 1:
        raise InvalidInput(f"chunk_rows={chunk_rows} must be at least 1")
    rows = {name: np.asarray(a).shape[0] if np.asarray(a).ndim else 0 for name, a in inputs.items()}
    if not rows or len(set(rows.values())) != 1 or not next(iter(rows.values())):
        raise InvalidInput(f"a job needs inputs with the same, non-zero number of rows; got {rows}")
    total = next(iter(rows.values()))
    return [
        [encode_tensor(name, np.asarray(a)[start : start + chunk_rows]) for name, a in inputs.items()]
        for start in range(0, total, chunk_rows)
    ]


def chunk_priority(
    policy: policies.Policy | str, request_class: str, chunk_s: float, remaining_chunks: int, settings: Settings
) -> int:
    """Pure: the level of a job's next chunk, from the work the job has left."""
    facts = policies.RequestFacts(request_class, chunk_s, chunk_s * remaining_chunks)
    return policies.priority_for(policy, facts, settings.policy_params())


def send_chunk(app: Celery, client: redis.Redis, job_id: str, model: str, index: int, priority: int) -> None:
    message = {"name": "maas.chunk", "queue": model_queue(model), "priority": priority, "args": [job_id, index]}
    result = app.send_task("maas.chunk", args=message["args"], queue=message["queue"], priority=priority)
    pipe = client.pipeline(transaction=False)
    ledger.record(pipe, result.id, message)
    pipe.execute()


def model_policy(session: Session, model: str, settings: Settings) -> policies.Policy:
    row = session.scalars(select(Model).where(Model.name == model)).one()
    return policies.parse_policy(row.policy or settings.policy)


@dataclass(frozen=True)
class JobStatus:
    id: str
    model: str
    status: str
    total: int
    done: int
    failed: int
    errors: list[str]


def status(session: Session, job_id: str) -> JobStatus:
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJob(f"job {job_id!r} does not exist")
    counts = dict(
        session.execute(
            select(JobChunk.status, func.count()).where(JobChunk.job_id == job_id).group_by(JobChunk.status)
        )
        .tuples()
        .all()
    )
    errors = [
        f"chunk {c.index}: {c.error}"
        for c in session.scalars(
            select(JobChunk).where(JobChunk.job_id == job_id, JobChunk.status == ChunkState.FAILED)
        )
    ]
    return JobStatus(
        job.id,
        job.model,
        job.status,
        job.total_chunks,
        counts.get(ChunkState.DONE, 0),
        counts.get(ChunkState.FAILED, 0),
        errors,
    )


class Jobs:
    """The producer side of jobs, used by the client and the CLI."""

    def __init__(self, settings: Settings, app: Celery, client: redis.Redis) -> None:
        self.settings, self.app, self.redis = settings, app, client

    def submit(
        self,
        model: str,
        version: int | None,
        chunks: Sequence[list[dict[str, Any]]],
        chunk_s: float,
        *,
        request_class: str = "batch",
        max_attempts: int = 3,
        parallelism: int = 1,
    ) -> str:
        job_id = str(uuid.uuid4())
        with session_scope(self.settings.sqlalchemy_url) as session:
            policy = model_policy(session, model, self.settings)
            session.add(
                Job(
                    id=job_id,
                    model=model,
                    version=version,
                    request_class=request_class,
                    status=JobState.RUNNING.value,
                    total_chunks=len(chunks),
                    chunk_service_s=chunk_s,
                    max_attempts=max_attempts,
                )
            )
            first = min(parallelism, len(chunks))
            for i, tensors in enumerate(chunks):
                state = ChunkState.QUEUED if i < first else ChunkState.PENDING
                session.add(JobChunk(job_id=job_id, index=i, inputs=tensors, status=state.value))
        level = chunk_priority(policy, request_class, chunk_s, len(chunks), self.settings)
        for i in range(first):
            send_chunk(self.app, self.redis, job_id, model, i, level)
        return job_id

    def status(self, job_id: str) -> JobStatus:
        with session_scope(self.settings.sqlalchemy_url) as session:
            return status(session, job_id)

    def cancel(self, job_id: str) -> JobStatus:
        """Chunks not yet started are never run; a chunk in flight finishes."""
        with session_scope(self.settings.sqlalchemy_url) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise UnknownJob(f"job {job_id!r} does not exist")
            if job.status == JobState.RUNNING:
                job.status, job.updated_at = JobState.CANCELLED.value, utcnow()
        return self.status(job_id)

    def results(self, job_id: str) -> list[list[dict[str, Any]] | None]:
        """Each chunk's output tensors in order (None for a chunk that failed or has not run)."""
        with session_scope(self.settings.sqlalchemy_url) as session:
            if session.get(Job, job_id) is None:
                raise UnknownJob(f"job {job_id!r} does not exist")
            return [
                c.outputs
                for c in session.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.index))
            ]
