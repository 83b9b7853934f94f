"""Running one chunk of a job on this worker, then sending the job's next chunk at its new priority."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from sqlalchemy import select

from app import logs
from app.broker.clients import for_settings
from app.db.schema import Job, JobChunk, utcnow
from app.db.session import session_scope
from app.errors import MaasError, UnknownJob
from app.job_states import ChunkState, JobState
from app.jobs import chunk_priority, model_policy, send_chunk
from workers.context import current

log = logging.getLogger("maas.worker")


#: The worker's infer task body: (model, version, OIP input tensors) -> the answer, outputs under "outputs".
Infer = Callable[[str, int | None, list[dict[str, Any]]], dict[str, Any]]


def run_chunk(app: Celery, job_id: str, index: int, infer: Infer) -> dict[str, Any]:
    ctx = current()
    url = ctx.settings.sqlalchemy_url
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        chunk = session.get(JobChunk, (job_id, index))
        if job is None or chunk is None or chunk.status == ChunkState.DONE:
            return {"job": job_id, "chunk": index, "skipped": "unknown or already done"}
        if job.status != JobState.RUNNING:
            return {"job": job_id, "chunk": index, "skipped": f"job is {job.status}"}
        model, version, inputs, attempts = job.model, job.version, chunk.inputs, chunk.attempts + 1
        chunk.attempts = attempts
    outputs: list[dict[str, Any]] | None = None
    error = ""
    try:
        answer = infer(model, version, inputs)
        outputs = answer["outputs"]
    except MaasError as exc:
        error = str(exc)
    return _record_and_continue(app, job_id, index, outputs, error, attempts)


def _record_and_continue(
    app: Celery, job_id: str, index: int, outputs: list[dict[str, Any]] | None, error: str, attempts: int
) -> dict[str, Any]:
    ctx = current()
    with session_scope(ctx.settings.sqlalchemy_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        chunk = session.get(JobChunk, (job_id, index))
        if job is None or chunk is None:  # deleted while the chunk ran
            raise UnknownJob(f"job {job_id!r} chunk {index} is no longer in the database")
        retry = bool(error) and attempts < job.max_attempts and job.status == JobState.RUNNING
        if outputs is not None:
            chunk.status, chunk.outputs = ChunkState.DONE.value, outputs
        elif not retry:
            chunk.status, chunk.error = ChunkState.FAILED.value, error
        chunk.worker, chunk.finished_at = ctx.worker_name, utcnow()
        pending = session.scalars(
            select(JobChunk)
            .where(JobChunk.job_id == job_id, JobChunk.status == ChunkState.PENDING)
            .order_by(JobChunk.index)
        ).all()
        left = len(pending) + (1 if retry else 0)
        nxt = index if retry else (pending[0].index if pending and job.status == JobState.RUNNING else None)
        if nxt is not None and nxt != index:
            pending[0].status = ChunkState.QUEUED.value
        in_flight = session.scalar(
            select(JobChunk.index).where(
                JobChunk.job_id == job_id, JobChunk.status == ChunkState.QUEUED, JobChunk.index != index
            )
        )
        if nxt is None and in_flight is None and job.status == JobState.RUNNING:
            failed = session.scalar(
                select(JobChunk.index).where(JobChunk.job_id == job_id, JobChunk.status == ChunkState.FAILED)
            )
            job.status = (JobState.FAILED if failed is not None else JobState.SUCCEEDED).value
        job.updated_at = utcnow()
        policy = model_policy(session, job.model, ctx.settings)
        level = chunk_priority(policy, job.request_class, job.chunk_service_s, max(1, left), ctx.settings)
        model, status = job.model, job.status
    if error:
        logs.event(
            log,
            "chunk_failed",
            logging.WARNING,
            job=job_id,
            chunk=index,
            model=model,
            worker=ctx.worker_name,
            attempt=attempts,
            retry=retry,
            reason=error,
        )
    if nxt is not None and status != JobState.CANCELLED:
        send_chunk(app, for_settings(ctx.settings), job_id, model, nxt, level)
    return {"job": job_id, "chunk": index, "ok": outputs is not None, "next": nxt, "priority": level}
