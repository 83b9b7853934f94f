"""A client meets Redis outages typed and bounded: an answer stored across a Redis restart still reaches a waiting
client; a Redis that stays away is BROKER_UNAVAILABLE by the caller's timeout, never a hang or a raw error."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from app.celery_app import create_app
from app.errors import BrokerUnavailable
from bench.models import add_one
from harness.servers import wait_for

pytestmark = pytest.mark.integration
X = np.zeros((1, 4), dtype=np.float32)


@pytest.fixture
def env(env, own_redis):
    return {**env, "REDIS_URL": own_redis.url, "MAAS_RETRY_MAX_S": "2"}


def test_an_answer_stored_after_a_redis_restart_reaches_the_waiting_client(
    client, settings, register, own_redis, tmp_path
):
    register("add", add_one(tmp_path / "add.onnx"))
    handle = client.infer("add", {"x": X})  # no worker: it waits in its queue
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(_outcome(handle, 60)), daemon=True)
    waiter.start()
    own_redis.kill()  # SIGKILL, and waited for: the client's result channel is broken
    own_redis.restart()
    # A worker answers once Redis is back (stored and published as a worker's Celery would).
    create_app(settings).backend.mark_as_done(handle.id, {"answer": 42})
    wait_for(lambda: got, 60, "the waiting client to get the answer")
    assert got == [{"answer": 42}]


def test_a_wait_that_met_the_outage_gets_the_answer_once_redis_is_back(
    client, settings, register, own_redis, tmp_path, caplog
):
    # The wait meets the outage (its slices fail, Celery's result consumer may give up reconnecting): once Redis
    # is back it subscribes again and reads the answer stored meanwhile.
    register("add", add_one(tmp_path / "add.onnx"))
    handle = client.infer("add", {"x": X})
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(_outcome(handle, 60)), daemon=True)
    own_redis.kill()
    waiter.start()
    wait_for(lambda: "Redis did not answer while waiting" in caplog.text, 30, "the wait to meet the outage")
    own_redis.restart()
    create_app(settings).backend.mark_as_done(handle.id, {"answer": 7})
    wait_for(lambda: got, 60, "the waiting client to get the answer")
    assert got == [{"answer": 7}]


def test_a_redis_that_stays_away_is_broker_unavailable_within_the_timeout(client, register, own_redis, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    handle = client.infer("add", {"x": X})
    own_redis.kill()

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="within 3s"):
        handle.wait(timeout_s=3)
    assert time.monotonic() - started < 3 + 10  # its timeout and a reconnect attempt, not minutes

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="Redis did not answer while"):
        client.infer("add", {"x": X})  # the reference is cached; the admission retries for MAAS_RETRY_MAX_S = 2 s
    assert time.monotonic() - started < 2 + 10


def _outcome(handle, timeout_s: float) -> object:
    try:
        return handle.wait(timeout_s=timeout_s)
    except Exception as exc:  # what the test reports instead of an answer
        return exc


def test_maas_status_shows_beat_and_controller_heartbeats_and_which_are_dead(env, client, monkeypatch, capsys):
    from app import cli
    from app.broker import heartbeats

    heartbeats.stamp(client.redis, "beat", time.time() - 100)
    heartbeats.stamp(client.redis, "ctl@test")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    dead = re.search(r"dead for (\d+) s", lines["beat"])
    assert dead is not None and 100 <= int(dead.group(1)) < 160, lines["beat"]
    assert "alive" in lines["ctl@test"]


def test_an_outage_error_stored_as_the_answer_is_typed_at_once_not_waited_on(client, settings, register, tmp_path):
    """A worker that answered with a driver's connection error (it met a failover it could not wait out): the
    caller gets BROKER_UNAVAILABLE as soon as it reads it, not after reading the same answer until its timeout."""
    import redis

    register("add", add_one(tmp_path / "add.onnx"))
    handle = client.infer("add", {"x": X})
    create_app(settings).backend.mark_as_failure(handle.id, redis.ConnectionError("primary went away"))
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(_outcome(handle, 600)), daemon=True)
    waiter.start()
    # Bounded by the test's own deadline, far below the wait's 600 s: it must end by reading the answer.
    wait_for(lambda: outcome, 60, "the wait to end")
    (error,) = outcome
    assert isinstance(error, BrokerUnavailable) and "failed on its worker" in str(error), error
