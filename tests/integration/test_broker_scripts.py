"""The Lua scripts against a real Redis: admission and batch taking, edge cases included."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from app.broker import clients, keys, scripts
from app.broker.layout import PRIORITY_LEVELS, model_queue, priority_lists
from app.errors import QueueFull

pytestmark = pytest.mark.integration
QUEUE = model_queue("iris")


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = clients.sync_client(redis_url)
    client.flushall()
    return client


def _admission(
    task_id: str, limit: int = 3, aging: dict | None = None, message: bytes | None = None
) -> scripts.Admission:
    body = {"name": "maas.infer", "queue": QUEUE, "priority": 4, "args": ["iris", None, []]}
    return scripts.Admission(QUEUE, "iris", task_id, 1000.0, body, limit, aging, message)


def _infer_message(task_id: str, task: str = "maas.infer") -> bytes:
    body = json.dumps([["iris", None, []], {}, {}])
    return json.dumps({"body": body, "headers": {"task": task, "id": task_id}, "properties": {}}).encode()


def test_admit_records_the_request_and_returns_the_backlog(r: redis.Redis) -> None:
    r.lpush(priority_lists(QUEUE)[3], b"x")
    r.lpush(priority_lists(QUEUE)[9], b"y")
    assert scripts.admit(r, _admission("t1")) == 2
    assert r.zscore(keys.LEDGER_SINCE, "t1") == 1000.0
    assert json.loads(r.hget(keys.LEDGER_BODY, "t1"))["queue"] == QUEUE
    assert r.hget(keys.ARRIVALS, "iris") == b"1"
    assert not r.exists(keys.aging_index("iris"))  # not under aging: no index entry


def test_admit_writes_the_aging_index_for_aging_models(r: redis.Redis) -> None:
    scripts.admit(r, _admission("t1", aging={"c": "interactive", "e": 0.1, "b": 0.0, "l": 4}))
    assert r.zscore(keys.aging_index("iris"), "t1") == 1000.0
    assert json.loads(r.hget(keys.AGING_FACTS, "t1"))["l"] == 4


def test_a_full_queue_refuses_and_writes_nothing(r: redis.Redis) -> None:
    for level in (0, 5, 9):  # the count spans every level, the last included
        r.lpush(priority_lists(QUEUE)[level], b"waiting")
    with pytest.raises(QueueFull, match="3 requests waiting, at its limit of 3"):
        scripts.admit(r, _admission("refused", limit=3))
    assert r.zscore(keys.LEDGER_SINCE, "refused") is None
    assert r.hget(keys.LEDGER_BODY, "refused") is None
    assert r.hget(keys.ARRIVALS, "iris") is None


def test_the_script_is_sent_once_then_called_by_sha(r: redis.Redis) -> None:
    scripts.admit(r, _admission("t1", limit=100))
    sha = scripts.script(r, "admit").sha
    assert r.script_exists(sha) == [True]
    r.script_flush()  # as after a Redis restart: redis-py sends the text again on NOSCRIPT
    assert scripts.admit(r, _admission("t2", limit=100)) == 0
    assert r.script_exists(sha) == [True]


def test_withdraw_takes_back_what_admit_wrote(r: redis.Redis) -> None:
    scripts.admit(r, _admission("t1", aging={"c": "batch", "e": 1.0, "b": 0.0, "l": 6}))
    scripts.withdraw(r, "iris", "t1")
    assert r.zscore(keys.LEDGER_SINCE, "t1") is None
    assert r.hget(keys.AGING_FACTS, "t1") is None
    assert r.hget(keys.ARRIVALS, "iris") == b"0"


def test_take_back_removes_a_waiting_request_and_its_records_together(r: redis.Redis) -> None:
    admission = _admission("t1", aging={"c": "batch", "e": 1.0, "b": 0.0, "l": 6}, message=_infer_message("t1"))
    scripts.admit(r, admission)
    assert admission.message is not None
    assert scripts.take_back(r, admission.list_key, admission.message, "iris", "t1")
    assert r.llen(admission.list_key) == 0
    assert r.zscore(keys.LEDGER_SINCE, "t1") is None
    assert r.hget(keys.LEDGER_BODY, "t1") is None
    assert r.zscore(keys.aging_index("iris"), "t1") is None
    assert r.hget(keys.AGING_FACTS, "t1") is None
    assert r.hget(keys.ARRIVALS, "iris") == b"0"


def test_take_back_leaves_a_taken_request_to_the_ledger(r: redis.Redis) -> None:
    """A worker popped the message: the request runs to the end, so its ledger record must stay to watch it."""
    admission = _admission("t1", message=_infer_message("t1"))
    scripts.admit(r, admission)
    assert admission.message is not None
    assert r.rpop(admission.list_key) == admission.message  # the worker's pop
    assert not scripts.take_back(r, admission.list_key, admission.message, "iris", "t1")
    assert r.zscore(keys.LEDGER_SINCE, "t1") == 1000.0
    assert r.hget(keys.ARRIVALS, "iris") == b"1"


def test_async_take_back_runs_the_same_script(redis_url: str, r: redis.Redis) -> None:
    admission = _admission("a1", message=_infer_message("a1"))
    scripts.admit(r, admission)
    assert admission.message is not None
    message = admission.message

    async def go() -> bool:
        client = clients.async_client(redis_url)
        try:
            return await scripts.take_back_async(client, admission.list_key, message, "iris", "a1")
        finally:
            await client.aclose()

    assert asyncio.run(go())
    assert r.zcard(keys.LEDGER_SINCE) == 0


def test_async_admit_runs_the_same_script(redis_url: str, r: redis.Redis) -> None:
    async def go() -> int:
        client = clients.async_client(redis_url)
        try:
            return await scripts.admit_async(client, _admission("a1"))
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 0
    assert r.zscore(keys.LEDGER_SINCE, "a1") == 1000.0


def test_take_batch_takes_oldest_first_highest_level_first(r: redis.Redis) -> None:
    lists = priority_lists(QUEUE)
    for task_id in ("low-1", "low-2"):
        r.lpush(lists[7], _infer_message(task_id))  # kombu LPUSHes: the oldest sits at the tail
    r.lpush(lists[2], _infer_message("high-1"))
    taken = [json.loads(raw)["headers"]["id"] for raw in scripts.take_batch(r, QUEUE, 10)]
    assert taken == ["high-1", "low-1", "low-2"]
    assert sum(r.llen(key) for key in lists) == 0


def test_take_batch_stops_at_its_count(r: redis.Redis) -> None:
    for i in range(5):
        r.lpush(priority_lists(QUEUE)[0], _infer_message(f"t{i}"))
    assert len(scripts.take_batch(r, QUEUE, 2)) == 2
    assert r.llen(priority_lists(QUEUE)[0]) == 3
    assert scripts.take_batch(r, QUEUE, 0) == []


@pytest.mark.parametrize(
    "head",
    [
        _infer_message("chunk-1", task="maas.chunk"),  # another task keeps its place and its own path
        b'{"body": "protocol 1", "properties": {}}',  # no headers: a message of another protocol
        b"\x80\x04 not json at all",  # unreadable
        b"[1, 2, 3]",  # JSON, but not a message
    ],
)
def test_take_batch_leaves_a_foreign_message_at_the_head_and_looks_at_later_levels(r: redis.Redis, head: bytes) -> None:
    lists = priority_lists(QUEUE)
    r.lpush(lists[1], _infer_message("behind"))  # older than the head: never taken past it
    r.lpush(lists[1], b"newer-junk")
    r.rpush(lists[1], head)  # the head: at the popping end
    r.lpush(lists[len(PRIORITY_LEVELS) - 1], _infer_message("lowest"))
    taken = [json.loads(raw)["headers"]["id"] for raw in scripts.take_batch(r, QUEUE, 10)]
    assert taken == ["lowest"]
    assert r.lindex(lists[1], -1) == head
    assert r.llen(lists[1]) == 3


def test_admitting_the_same_task_id_twice_queues_it_once(r: redis.Redis) -> None:
    # A producer whose connection broke after the call ran retries it: the second call must write nothing.
    body = {"name": "maas.infer", "queue": QUEUE, "priority": 4, "args": ["iris", None, []]}
    admission = scripts.Admission(QUEUE, "iris", "again", 1000.0, body, 3, None, _infer_message("again"), 4)
    first = scripts.admit(r, admission)
    second = scripts.admit(r, admission)
    assert (first, second) == (0, 1)  # the second sees the first's message waiting, and adds none
    assert sum(r.llen(q) for q in priority_lists(QUEUE)) == 1
    assert r.hget(keys.ARRIVALS, "iris") == b"1"


def test_a_pipelined_script_survives_a_flush_and_runs_once(r: redis.Redis) -> None:
    """The result store's path: EVALSHA in a pipeline with no SCRIPT EXISTS round trip; after SCRIPT FLUSH the
    NOSCRIPT reply (the script did not run) loads it and the round trip is made again, once."""
    key = "celery-task-meta-pipelined"
    value = json.dumps({"status": "SUCCESS", "result": 1})
    r.script_flush()
    replies = scripts.pipelined(r, "store_result", [key, keys.FLEET_COUNTERS], [value, 60], then=lambda p: p.ping())
    assert replies == [1, True]
    assert r.get(key) == value.encode()
    assert r.hget(keys.FLEET_COUNTERS, "answered_twice") is None
    # Loaded now: the second answer is dropped and counted, by SHA alone.
    assert scripts.pipelined(r, "store_result", [key, keys.FLEET_COUNTERS], [value, 60]) == [0]
    assert r.hget(keys.FLEET_COUNTERS, "answered_twice") == b"1"


def test_a_durable_admission_no_replica_confirmed_is_refused_and_counted(r: redis.Redis, redis_url: str) -> None:
    """MAAS_REDIS_WAIT_REPLICAS: accepted means a replica has it. This Redis has none, so the WAIT runs out and
    the admission is refused with a typed error (the caller takes back what it wrote), never reported accepted."""
    from app.broker.clients import UNREPLICATED
    from app.errors import BrokerUnavailable
    from app.settings import Settings

    env = {"REDIS_URL": redis_url, "MAAS_REDIS_WAIT_REPLICAS": "1", "MAAS_REDIS_WAIT_TIMEOUT_MS": "20"}
    settings = Settings.from_env(env)
    with pytest.raises(BrokerUnavailable, match="not every connected replica .at least 1.* not accepted"):
        scripts.admit(r, _admission("t1", limit=100), settings)
    assert r.hget(keys.FLEET_COUNTERS, UNREPLICATED) == b"1"
    # A full queue is refused as full: it wrote nothing, so there was nothing to replicate.
    with pytest.raises(QueueFull):
        scripts.admit(r, _admission("t2", limit=0), settings)
    assert r.hget(keys.FLEET_COUNTERS, UNREPLICATED) == b"1"


def test_the_client_takes_back_an_admission_no_replica_confirmed(env, register, iris) -> None:
    from app.client import Client
    from app.errors import BrokerUnavailable
    from app.settings import Settings

    register("iris", iris["path"])
    settings = Settings.from_env({**env, "MAAS_REDIS_WAIT_REPLICAS": "1", "MAAS_REDIS_WAIT_TIMEOUT_MS": "20"})
    client = Client(settings)
    with pytest.raises(BrokerUnavailable, match="was not sent"):
        client.infer("iris", {"X": iris["x"][:2]})
    r = redis.Redis.from_url(env["REDIS_URL"])
    assert r.hlen(keys.LEDGER_BODY) == 0
    assert all(r.llen(name) == 0 for name in r.keys("m.iris*"))


def test_an_unreplicated_admission_a_worker_already_took_counts_as_accepted(env, register, iris, monkeypatch) -> None:
    """No replica confirmed it, but a worker popped it before the take-back: it runs whatever the client says,
    so the client reports it accepted (a refusal would invite a second run) and keeps its ledger record."""
    from app.client import Client
    from app.errors import AdmissionNotReplicated
    from app.settings import Settings

    register("iris", iris["path"])
    settings = Settings.from_env({**env, "MAAS_REDIS_WAIT_REPLICAS": "1", "MAAS_REDIS_WAIT_TIMEOUT_MS": "20"})
    client = Client(settings)
    r = redis.Redis.from_url(env["REDIS_URL"])
    real_admit = scripts.admit

    def admitted_then_taken(redis_client, admission, _settings=None):
        backlog = real_admit(redis_client, admission)  # written on the primary, no WAIT
        assert r.lrem(admission.list_key, 1, admission.message) == 1  # a worker takes it
        raise AdmissionNotReplicated("no replica confirmed it", backlog)

    monkeypatch.setattr(scripts, "admit", admitted_then_taken)
    handle = client.infer("iris", {"X": iris["x"][:2]})
    assert r.hexists(keys.LEDGER_BODY, handle.id)


def test_heartbeat_rows_silent_a_day_are_forgotten_and_a_clean_stop_removes_its_own(r: redis.Redis) -> None:
    from app.broker import heartbeats

    heartbeats.stamp(r, "beat@c1:7", now=1_000.0)
    heartbeats.stamp(r, "beat@c1:8", now=1_000.0 + heartbeats.FORGET_AFTER_S)
    heartbeats.stamp(r, "controller@c1", now=1_000.0 + heartbeats.FORGET_AFTER_S)
    seen = heartbeats.read(r, now=1_001.0 + heartbeats.FORGET_AFTER_S)
    assert set(seen) == {"beat@c1:8", "controller@c1"}
    assert r.hexists(keys.COMPONENT_HEARTBEATS, "beat@c1:7") == 0
    heartbeats.forget(r, "beat@c1:8")
    assert set(heartbeats.read(r, now=1_001.0 + heartbeats.FORGET_AFTER_S)) == {"controller@c1"}


def test_two_beats_with_the_same_name_do_not_both_hold_the_lease(r: redis.Redis) -> None:
    """In containers two beats can both be pid 1 on hosts of one name: the nonce keeps their claims apart."""
    from app.broker import leases

    first, second = leases.unique_holder("beat@c:1"), leases.unique_holder("beat@c:1")
    assert first != second
    assert leases.claim(r, "maas:lock:test", first, 5_000)
    assert not leases.claim(r, "maas:lock:test", second, 5_000)
    held = leases.holder(r, "maas:lock:test")
    assert held is not None and held[0] == "beat@c:1"
