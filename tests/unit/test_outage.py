"""Bounded retry of outages: typed errors, backoff within the limits, other errors untouched."""

from __future__ import annotations

import time

import pytest
import redis
import sqlalchemy.exc

from app import outage
from app.errors import BrokerUnavailable, DatabaseUnavailable, UnknownModel


def _failing(exc: Exception, times: int):
    calls = []

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise exc
        return "ok"

    return fn, calls


def test_an_outage_shorter_than_the_retry_is_invisible():
    fn, calls = _failing(redis.ConnectionError("refused"), 2)
    assert outage.retrying(fn, "testing", attempts=5, max_s=10) == "ok"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= outage.FIRST_WAIT_S * 0.9  # waited between tries
    assert calls[2] - calls[1] >= 2 * outage.FIRST_WAIT_S * 0.9  # and twice as long the next time


def test_a_broker_outage_ends_in_broker_unavailable_after_the_attempts():
    fn, calls = _failing(redis.TimeoutError("no reply"), 100)
    with pytest.raises(BrokerUnavailable, match="while testing: TimeoutError: no reply") as info:
        outage.retrying(fn, "testing", attempts=3, max_s=60)
    assert len(calls) == 3 and isinstance(info.value.__cause__, redis.TimeoutError)


def test_a_database_outage_ends_in_database_unavailable_within_max_s():
    exc = sqlalchemy.exc.OperationalError("SELECT 1", {}, OSError("connection refused"))
    fn, calls = _failing(exc, 100)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="connection refused"):
        outage.retrying(fn, "testing", attempts=100, max_s=0.5)
    assert time.monotonic() - started < 0.5 + 0.2  # never sleeps past its budget
    assert len(calls) >= 2


def test_errors_that_are_not_outages_pass_at_once():
    fn, calls = _failing(UnknownModel("no such model"), 100)
    with pytest.raises(UnknownModel):
        outage.retrying(fn, "testing", attempts=5, max_s=10)
    assert len(calls) == 1


def test_backoff_doubles_up_to_its_cap():
    assert [outage.backoff(i) for i in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]


def test_a_heartbeat_older_than_the_timeout_reads_dead_for_n_seconds():
    from app.broker.heartbeats import describe

    assert describe(1000.0, timeout_s=30, now=1002.4) == "alive (2 s ago)"
    assert describe(1000.0, timeout_s=30, now=1045.0) == "dead for 45 s"


def test_celery_giving_up_a_publish_is_a_broker_outage():
    import kombu.exceptions

    error = outage.typed(kombu.exceptions.OperationalError("Error 111 connecting"), "sending a load")
    assert isinstance(error, BrokerUnavailable) and "sending a load" in error.message


def _infer_task_with(monkeypatch: pytest.MonkeyPatch, body, retry_max_s: float):
    """The registered ``maas.infer`` task with its body replaced (the wrapper around it is what is tested)."""
    from types import SimpleNamespace

    from celery import Celery

    from workers import tasks

    app = Celery("unit", set_as_current=False)
    tasks.register(app)
    monkeypatch.setattr(tasks, "_infer_task", body)
    monkeypatch.setattr(tasks, "current", lambda: SimpleNamespace(settings=SimpleNamespace(retry_max_s=retry_max_s)))
    return app.tasks["maas.infer"]


def test_an_infer_task_waits_out_a_redis_error_and_serves_the_request_again(monkeypatch):
    calls: list[int] = []

    def body(app, task, args, kwargs):
        calls.append(1)
        if len(calls) < 3:  # a failover: the primary is gone for two tries
            raise redis.ConnectionError("primary went away")
        return {"answer": args}

    task = _infer_task_with(monkeypatch, body, retry_max_s=30.0)
    assert task("m", None, []) == {"answer": ("m", None, [])}
    assert len(calls) == 3


def test_an_infer_task_answers_broker_unavailable_once_the_outage_outlasts_its_retry(monkeypatch):
    def body(app, task, args, kwargs):
        raise redis.ConnectionError("primary went away")

    task = _infer_task_with(monkeypatch, body, retry_max_s=0.5)
    with pytest.raises(BrokerUnavailable, match="serving request"):
        task("m", None, [])


def test_an_infer_task_passes_its_own_errors_through_at_once(monkeypatch):
    calls: list[int] = []

    def body(app, task, args, kwargs):
        calls.append(1)
        raise UnknownModel("no model 'm'")

    task = _infer_task_with(monkeypatch, body, retry_max_s=30.0)
    with pytest.raises(UnknownModel):
        task("m", None, [])
    assert calls == [1]


def test_the_window_can_count_from_the_first_error_so_a_long_call_still_waits_an_outage_out():
    slow_then_failing = {"calls": 0}

    def fn():
        slow_then_failing["calls"] += 1
        if slow_then_failing["calls"] == 1:
            time.sleep(0.3)  # a long request, longer than the window, then an outage at its end
            raise redis.ConnectionError("primary went away")
        return "served"

    assert outage.retrying(fn, "serving", attempts=10, max_s=0.25, from_first_error=True) == "served"
    slow_then_failing["calls"] = 0
    with pytest.raises(BrokerUnavailable):  # counted from the call, the window was spent before the error
        outage.retrying(fn, "serving", attempts=10, max_s=0.25)
