"""A request answered twice: the caller sees the first answer, the second is counted and dropped."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import redis
from celery.result import AsyncResult

from app.broker.clients import UNREPLICATED, ReplicaCounts, replica_counts, replicas_needed
from app.broker.first_result import ANSWERED_TWICE
from app.broker.keys import FLEET_COUNTERS
from app.celery_app import create_app
from app.settings import Settings
from harness.servers import start_redis, wait_for

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


@pytest.fixture
def syncing_replica(tmp_path):
    """A primary whose only replica is connected but held in its first full sync: the primary waits a minute
    before it sends the snapshot (``repl-diskless-sync-delay``), as a replica in a long resync looks."""
    primary = start_redis(tmp_path / "primary")
    replica = start_redis(tmp_path / "replica")
    p, r = redis.Redis.from_url(primary.url), redis.Redis.from_url(replica.url)
    p.config_set("repl-diskless-sync", "yes")
    p.config_set("repl-diskless-sync-delay", 60)
    r.config_set("masterauth", urlsplit(primary.url).password)
    r.replicaof("127.0.0.1", primary.port)
    wait_for(lambda: int(p.info("replication")["connected_slaves"]) == 1, 30, "the replica to connect")
    try:
        yield primary, p
    finally:
        replica.stop()
        primary.stop()


def _waits_sent(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def test_a_result_waits_only_for_replicas_able_to_answer(syncing_replica):
    """With MAAS_REDIS_WAIT_REPLICAS=1, a result waits for the online replicas. One still in a full sync cannot
    acknowledge: a WAIT for it would hold the worker for the whole timeout on every result. The result is stored
    without one and counted unreplicated; once the sync is over, results wait for it again."""
    primary, p = syncing_replica
    env = {"REDIS_URL": primary.url, "MAAS_REDIS_WAIT_REPLICAS": "1", "MAAS_REDIS_WAIT_TIMEOUT_MS": "20000"}
    settings = Settings.from_env(env)
    replication = p.info("replication")
    assert replication["slave0"]["state"] != "online"
    assert ReplicaCounts.of(replication) == ReplicaCounts(connected=1, online=0)
    # An admission still waits for it: Sentinel could promote it, so nothing is accepted on the primary alone.
    assert replicas_needed(p, settings) == 1

    backend = create_app(settings).backend
    backend.mark_as_done("t-syncing", {"answer": 1})
    assert AsyncResult("t-syncing", app=backend.app).get(timeout=5) == {"answer": 1}
    assert _waits_sent(p) == 0
    assert int(p.hget(FLEET_COUNTERS, UNREPLICATED)) == 1

    # When the sync ends, the replica is online and the next result waits for it, and is not counted.
    p.config_set("repl-diskless-sync-delay", 0)
    wait_for(lambda: ReplicaCounts.of(p.info("replication")).online == 1, 60, "the replica's sync to end")
    wait_for(lambda: replica_counts(p, settings).online == 1, 10, "the count of online replicas to be read again")
    backend.mark_as_done("t-online", {"answer": 2})
    assert AsyncResult("t-online", app=backend.app).get(timeout=5) == {"answer": 2}
    assert _waits_sent(p) == 1
    assert int(p.hget(FLEET_COUNTERS, UNREPLICATED)) == 1
