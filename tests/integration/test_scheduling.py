"""Policies, deadlines, queue limits and chunked jobs, on real Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from app import errors
from app.broker.queues import depth_by_priority
from app.db.session import session_scope
from bench.models import reshape_to_2x2, wide_mlp
from harness.fleet import wait_for, wait_past

pytestmark = pytest.mark.integration
RNG = np.random.default_rng(0)


@pytest.fixture
def env(env):
    # Size bands tuned to this model's few-ms requests; the aging beat runs every 0.2 s.
    return {**env, "MAAS_TYPICAL_SERVICE_S": "0.01", "MAAS_AGING_PERIOD_S": "0.2"}


def x_rows(n: int) -> np.ndarray:
    return RNG.standard_normal((n, 16)).astype(np.float32)


@pytest.fixture
def mlp_served(client, fleet, register, tmp_path):
    """wide_mlp registered and served by one worker, its service time per row learned from real requests."""
    register("mlp", wide_mlp(tmp_path / "mlp.onnx"), service_ms=5)
    fleet.worker(0, "w0@test")
    client.load("mlp").wait()
    for rows in (1, 64) * 8:
        client.infer("mlp", {"x": x_rows(rows)}, priority=1).wait()

    def learned():  # the worker ships its observations with a later heartbeat
        client.scheduler.invalidate("mlp")
        return client.scheduler.estimate_s("mlp", 64) > 3 * client.scheduler.estimate_s("mlp", 1)

    wait_for(learned, 60, "the scheduler to learn that 64 rows take longer than one", interval_s=0.25)
    return fleet


@pytest.fixture
def backlog_then_serve(client, stop_model, done_order):
    def backlog_then_serve(requests):
        """Queue ``requests`` while nobody consumes the model, then reload it; the tags in the order served."""
        stop_model("mlp")
        handles = [(tag, client.infer("mlp", {"x": x_rows(rows)}, request_class=cls)) for tag, rows, cls in requests]
        client.load("mlp").wait()
        for _, handle in handles:
            handle.wait(timeout_s=180)
        return [tag for tag, _ in done_order(handles, key=lambda th: th[1])]

    return backlog_then_serve


def test_sjf_serves_short_requests_first_and_fifo_keeps_arrival_order(mlp_served, configure, backlog_then_serve):
    mixed = [("long", 64, "interactive"), ("short", 1, "interactive")] * 6
    configure("mlp", policy="sjf")
    assert backlog_then_serve(mixed) == ["short"] * 6 + ["long"] * 6
    configure("mlp", policy="fifo")
    assert backlog_then_serve(mixed) == ["long", "short"] * 6


def test_aging_lifts_a_starved_batch_request_above_fresh_interactive_work(
    settings, client, mlp_served, configure, stop_model, done_order
):
    # Under SJF, a long batch request queued behind a stream of short interactive ones would be served last.
    configure("mlp", policy="aging")
    fleet = mlp_served
    fleet.beat()
    stop_model("mlp")
    old = client.infer("mlp", {"x": x_rows(64)}, request_class="batch")
    r = redis.Redis.from_url(settings.redis_url)
    submitted_level = next(level for level, n in enumerate(depth_by_priority(r, "m.mlp")) if n)
    # It waits long enough for the aging beat to move it up, all the way to the top level...
    wait_for(lambda: depth_by_priority(r, "m.mlp")[0] == 1, 90, "the aging beat to promote the waiting request")
    assert submitted_level > 0
    # ...so the fresh interactive work that follows, short as it is, does not pass it.
    fresh = [client.infer("mlp", {"x": x_rows(1)}) for _ in range(40)]
    client.load("mlp").wait()
    old.wait(timeout_s=120)
    for h in fresh:
        h.wait(timeout_s=120)
    order = done_order([old, *fresh])
    assert order.index(old) == 0, f"aged request served at position {order.index(old)} of 41"


def test_a_controller_runs_the_aging_pass_and_the_serving_worker_takes_no_system_task(
    settings, client, fleet, register, configure, tmp_path
):
    register("mlp", wide_mlp(tmp_path / "mlp.onnx"), service_ms=5)
    configure("mlp", policy="aging")
    fleet.worker(0, "w0@test", MAAS_WORKER_SYSTEM_TASKS="false")
    fleet.controller("ctl@test")
    fleet.beat()

    def both_answered():  # a busy worker may miss one inspect's reply window: ask again
        replies = client.app.control.inspect(timeout=5.0).active_queues() or {}
        return {"w0@test", "ctl@test"} <= set(replies) and replies

    queues = {node: {q["name"] for q in qs} for node, qs in wait_for(both_answered, 90, "both to answer").items()}
    assert "maas.system" not in queues["w0@test"]
    assert queues["ctl@test"] == {"maas.system"}
    # Nothing serves the model yet, so its request waits; only the controller can promote it.
    handle = client.infer("mlp", {"x": x_rows(64)}, request_class="batch")
    r = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: depth_by_priority(r, "m.mlp")[0] == 1, 90, "the controller's aging pass to promote the request")
    assert int(r.hget("maas:aging:promoted", "mlp")) >= 1
    client.load("mlp").wait()
    answer = handle.wait(timeout_s=120)
    assert answer["parameters"]["worker"] == "w0@test"


def test_a_request_past_its_deadline_is_never_executed(client, mlp_served, stop_model):
    stop_model("mlp")
    late = client.infer("mlp", {"x": x_rows(1)}, deadline_s=0.3)
    wait_past(time.time() + 0.3)  # later than its deadline, stamped when it was sent
    on_time = client.infer("mlp", {"x": x_rows(1)}, deadline_s=120)
    plain = client.infer("mlp", {"x": x_rows(1)})
    client.load("mlp").wait()
    with pytest.raises(errors.DeadlineExceeded, match="not executed"):
        late.wait(timeout_s=60)
    assert on_time.wait(timeout_s=60)["model_name"] == "mlp"
    assert plain.wait(timeout_s=60)["model_name"] == "mlp"
    log = mlp_served.procs[0].log()
    assert '"code": "DEADLINE_EXCEEDED"' in log


def test_a_full_queue_refuses_at_once_and_accepts_nothing_half(settings, client, fleet, register, configure, tmp_path):
    register("mlp", wide_mlp(tmp_path / "mlp.onnx"))
    configure("mlp", max_queue=5)
    accepted = [client.infer("mlp", {"x": x_rows(1)}) for _ in range(5)]
    with pytest.raises(errors.QueueFull, match="'mlp' has 5 requests waiting, at its limit of 5"):
        client.infer("mlp", {"x": x_rows(1)})
    r = redis.Redis.from_url(settings.redis_url)
    assert sum(depth_by_priority(r, "m.mlp")) == 5 and r.zcard("maas:ledger:since") == 5
    fleet.worker(0, "w0@test")
    client.load("mlp").wait()
    assert all(h.wait(timeout_s=120)["model_name"] == "mlp" for h in accepted)


def test_srtf_short_job_overtakes_a_long_one_at_the_next_chunk_boundary(settings, client, mlp_served, configure):
    configure("mlp", policy="srtf")
    long_job = client.submit_job("mlp", {"x": x_rows(40 * 32)}, chunk_rows=32)
    wait_for(lambda: client.jobs.status(long_job).done >= 3, 120, "the long job to be under way")
    short_job = client.submit_job("mlp", {"x": x_rows(3 * 32)}, chunk_rows=32)
    submitted = time.time()
    wait_for(lambda: client.jobs.status(short_job).status == "SUCCEEDED", 120, "the short job")
    wait_for(lambda: client.jobs.status(long_job).status == "SUCCEEDED", 240, "the long job")
    from sqlalchemy import select

    from app.db.schema import JobChunk

    with session_scope(settings.sqlalchemy_url) as session:
        long_chunks = session.scalars(select(JobChunk).where(JobChunk.job_id == long_job)).all()
        short_chunks = session.scalars(select(JobChunk).where(JobChunk.job_id == short_job)).all()
        short_done = max(c.finished_at.timestamp() for c in short_chunks)
        overlapping = [c for c in long_chunks if submitted <= c.finished_at.timestamp() <= short_done]
    # At most the long job's chunk already in service finishes while the short job runs.
    assert len(overlapping) <= 1, len(overlapping)
    results = client.jobs.results(short_job)
    assert [r[0]["shape"] for r in results] == [[32, 8]] * 3


def test_a_failing_chunk_is_retried_then_reported_and_the_others_complete(client, fleet, register, tmp_path):
    register("reshape", reshape_to_2x2(tmp_path / "reshape.onnx"))
    fleet.worker(0, "w0@test")
    client.load("reshape").wait()
    # 10 values in chunks of 4: the last chunk has 2 values and cannot be reshaped to 2x2.
    job = client.submit_job("reshape", {"x": np.arange(10, dtype=np.float32)}, chunk_rows=4, max_attempts=2)
    wait_for(lambda: client.jobs.status(job).status != "RUNNING", 120, "the job to finish")
    status = client.jobs.status(job)
    assert (status.status, status.total, status.done, status.failed) == ("FAILED", 3, 2, 1)
    assert "chunk 2: MODEL_ERROR" in status.errors[0]
    assert client.jobs.results(job)[2] is None and client.jobs.results(job)[0][0]["shape"] == [2, 2]
    log = fleet.procs[0].log()
    assert log.count('"event": "chunk_failed"') == 2  # first attempt, then the bounded retry


def test_a_cancelled_job_runs_no_more_chunks(settings, client, fleet, register, tmp_path):
    register("mlp", wide_mlp(tmp_path / "mlp.onnx"))
    job = client.submit_job("mlp", {"x": x_rows(10 * 4)}, chunk_rows=4)
    assert client.jobs.cancel(job).status == "CANCELLED"
    r = redis.Redis.from_url(settings.redis_url)
    assert sum(depth_by_priority(r, "m.mlp")) == 1  # the job's first chunk waits for the model
    fleet.worker(0, "w0@test")
    client.load("mlp").wait()
    # The worker took the chunk, ran it (as a no-op: the job is cancelled) and acknowledged it.
    wait_for(
        lambda: sum(depth_by_priority(r, "m.mlp")) == 0 and r.hlen("unacked") == 0,
        90,
        "the worker to take and finish the cancelled job's waiting chunk",
    )
    status = client.jobs.status(job)
    assert (status.status, status.done) == ("CANCELLED", 0)
