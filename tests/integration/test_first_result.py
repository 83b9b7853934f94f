"""A request answered twice: the caller sees the first answer, the second is counted and dropped."""

from __future__ import annotations

import pytest
from celery.result import AsyncResult

from app.broker.first_result import ANSWERED_TWICE
from app.broker.keys import FLEET_COUNTERS

pytestmark = pytest.mark.integration


def test_the_first_final_result_stays_and_a_second_is_counted(client):
    backend = client.app.backend
    backend.mark_as_done("t-1", {"answer": "first"})
    backend.mark_as_done("t-1", {"answer": "second"})
    backend.mark_as_failure("t-1", RuntimeError("late failure"))
    assert AsyncResult("t-1", app=client.app).get(timeout=5) == {"answer": "first"}
    assert int(client.redis.hget(FLEET_COUNTERS, ANSWERED_TWICE)) == 2


def test_a_result_after_a_non_final_state_is_stored(client):
    backend = client.app.backend
    backend.store_result("t-2", None, "RETRY")
    backend.mark_as_done("t-2", 42)
    assert AsyncResult("t-2", app=client.app).get(timeout=5) == 42
    assert client.redis.hget(FLEET_COUNTERS, ANSWERED_TWICE) is None
