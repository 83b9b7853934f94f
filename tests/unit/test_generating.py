"""The worker's side of generation, without a model: what a resent generation's deadlines mean."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from app.broker import streams
from app.errors import DeadlineExceeded
from workers import generating

KEY = "fleet-key"


class RecordingEngine:
    """Only what the worker asks of an engine when it starts and expires requests."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.cancelled: dict[str, str] = {}

    def add(self, seq_id: str, prompt: str, params: Any, **_: Any) -> None:
        self.added.append(seq_id)

    def cancel(self, seq_id: str, reason: str = "cancelled") -> None:
        self.cancelled[seq_id] = reason


@pytest.fixture
def ctx(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    settings = SimpleNamespace(
        signing_key=KEY, generation_keepalive_s=0.2, result_expires_s=60.0, retry_attempts=6, retry_max_s=2.0
    )
    return SimpleNamespace(redis=client, settings=settings)


def overdue_request(task_id: str) -> generating.Request:
    """A generation whose first-token deadline passed while it was in flight (as on a resend)."""
    now = time.time()
    return generating.Request(
        task_id, "lm", None, "tokens flow", {"max_tokens": 4}, first_token_deadline_at=now - 1.0, submitted_at=now - 5
    )


def stream(ctx, task_id: str, *entries: dict[str, str], key: str = KEY) -> None:
    pipe = ctx.redis.pipeline(transaction=False)
    for entry in entries:
        streams.add(pipe, task_id, entry, key)
    pipe.execute()


LOADED = SimpleNamespace(model="lm", version=1)


def test_a_resent_generation_whose_first_token_was_streamed_runs_on(ctx):
    engine, running = RecordingEngine(), {}
    request = overdue_request("t-resent")
    stream(ctx, "t-resent", streams.text_entry(0, "hel"))
    generating._start(ctx, engine, LOADED, request, running)
    assert engine.added == ["t-resent"] and "t-resent" in running
    # Nor does the step boundary end it while this run has made no token yet.
    generating._expire(ctx, engine, running)
    assert engine.cancelled == {}


def test_a_first_token_deadline_with_nothing_streamed_still_refuses(ctx):
    engine, running = RecordingEngine(), {}
    with pytest.raises(DeadlineExceeded):
        generating._start(ctx, engine, LOADED, overdue_request("t-late"), running)
    # A forged text entry (not under the fleet key) proves nothing.
    stream(ctx, "t-forged", streams.text_entry(0, "hel"), key="not-the-fleet-key")
    with pytest.raises(DeadlineExceeded):
        generating._start(ctx, engine, LOADED, overdue_request("t-forged"), running)
    assert engine.added == []


def test_a_waiting_request_past_its_first_token_deadline_is_expired_unless_streamed(ctx):
    engine = RecordingEngine()
    running = {"t-late": overdue_request("t-late"), "t-resent": overdue_request("t-resent")}
    stream(ctx, "t-resent", streams.text_entry(0, "hel"))
    generating._expire(ctx, engine, running)
    assert engine.cancelled == {"t-late": generating.DEADLINE}


def test_a_waiting_sequence_gets_a_signed_keep_alive_at_most_once_a_period(ctx):
    """A sequence that makes no text (waiting, or preempted) gets a keep-alive on its stream once its stream was
    quiet for the period; one that streamed text this step gets none. Readers take it as life, not text."""
    running = {"t-running": overdue_request("t-running"), "t-waiting": overdue_request("t-waiting")}
    for request in running.values():
        request.streamed_at = time.monotonic() - 1.0
    chunks = [(running["t-running"], "hel", 0)]
    quiet = generating._quiet(ctx, running, {id(running["t-running"])})
    assert quiet == [running["t-waiting"]]
    generating._stream(ctx, chunks, quiet)
    # Within the period, nothing more.
    assert generating._quiet(ctx, running, set()) == []
    written = streams.read(ctx.redis, "t-waiting", "0", block_ms=0)
    assert [entry["k"] for _, entry in written] == ["wait"]
    reader = streams.Reader("t-waiting", KEY)
    assert reader.feed(written[0][1]) == "" and not reader.done  # signed under the fleet key: believed


class FailingOver:
    """A Redis client whose first ``failures`` pipelines fail when sent, as during a failover."""

    def __init__(self, client: redis.Redis, failures: int) -> None:
        self.client, self.failures = client, failures

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        if self.failures > 0:
            self.failures -= 1

            def fail() -> None:
                pipe.reset()  # as a real one does: the commands queued are gone
                raise redis.ConnectionError("Redis is failing over")

            pipe.execute = fail  # type: ignore[method-assign]
        return pipe


def test_a_step_s_text_is_streamed_through_a_short_redis_outage(ctx):
    """A Redis blip while a step's text is sent does not end the batch: the send is retried, whole, and the reader
    gets every character once."""
    flaky = SimpleNamespace(redis=FailingOver(ctx.redis, failures=2), settings=ctx.settings)
    request = overdue_request("t-blip")
    generating._stream(flaky, [(request, "hello", 0)], [])
    reader = streams.Reader("t-blip", KEY)
    assert "".join(reader.feed(e) for _, e in streams.read(ctx.redis, "t-blip", "0", block_ms=0)) == "hello"


def test_redis_down_past_the_retry_limit_is_broker_unavailable_on_the_worker(ctx):
    from app.errors import BrokerUnavailable

    ctx.settings.retry_max_s = 0.5
    down = SimpleNamespace(redis=FailingOver(ctx.redis, failures=100), settings=ctx.settings)
    with pytest.raises(BrokerUnavailable):
        generating._stream(down, [(overdue_request("t-down"), "hello", 0)], [])
