"""Poison, limits and cancellation on real Redis and workers: what cannot be read is dead-lettered (never retried
for ever), dead letters can be shown and replayed, oversized requests and results fail alone, a request not yet
taken can be cancelled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app import errors
from app.broker import dlq, scripts
from app.broker.keys import LEDGER_BODY
from app.broker.layout import model_queue, priority_lists, result_key
from app.signature import decode_tensor
from bench.models import add_one
from harness.fleet import wait_for

pytestmark = pytest.mark.integration
X = np.zeros((1, 4), dtype=np.float32)


def still_serves(client) -> None:
    answer = client.infer("add", {"x": X}).wait(timeout_s=60)
    assert decode_tensor(answer["outputs"][0]).reshape(-1).tolist() == [1.0, 1.0, 1.0, 1.0]


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("batching", [False, True], ids=["consumer", "batch-take"])
def test_unreadable_messages_are_dead_lettered_once_and_the_worker_keeps_serving(
    env, client, fleet, register, configure, tmp_path, batching
):
    register("add", add_one(tmp_path / "add.onnx"))
    if batching:
        configure("add", max_batch_size=8, max_queue_delay_ms=50)
    worker = fleet.worker(0, "w0@test")
    client.load("add").wait()
    poison = [
        b"\xff\xfe not json at all",
        b"[1, 2, 3]",
        json.dumps({"body": "e30=", "properties": {"body_encoding": "base64"}}).encode(),  # no delivery tag
        json.dumps(  # kombu's shape, but no task name and no id in the headers
            {"body": "W10=", "headers": {}, "properties": {"delivery_tag": "t1", "body_encoding": "base64"}}
        ).encode(),
    ]
    lists = priority_lists(model_queue("add"))
    # Behind a good request, so that in the batching case they are taken into its batch.
    handles = [client.infer("add", {"x": X}, priority=5) for _ in range(3)]
    client.redis.lpush(lists[5], *poison)
    handles += [client.infer("add", {"x": X}, priority=5) for _ in range(3)]
    for handle in handles:
        assert decode_tensor(handle.wait(timeout_s=90)["outputs"][0]).reshape(-1).tolist() == [1.0] * 4

    letters = wait_for(
        lambda: (found := dlq.entries(client.redis)) and len(found) >= len(poison) and found, 90, "dead letters"
    )
    assert len(letters) == len(poison)  # each once: acknowledged, not requeued
    assert all(e["malformed"] and e["queue"] == "m.add" and e["id"].startswith("dl-") for e in letters)
    assert all(client.redis.llen(key) == 0 for key in lists)
    assert worker.alive()
    still_serves(client)

    # `maas dlq show` names the reason and previews the bytes; replay refuses a malformed entry, which stays.
    letter = next(e for e in letters if "not JSON" in e["reason"] or "no task name" in e["reason"])
    shown = cli(env, "dlq", "show", letter["id"])
    assert shown.returncode == 0, shown.stderr
    assert letter["reason"] in shown.stdout and "m.add" in shown.stdout and "cannot be replayed" in shown.stdout
    refused = cli(env, "dlq", "replay", letter["id"])
    assert refused.returncode == 1 and "MALFORMED_MESSAGE" in refused.stderr and "not replayed" in refused.stderr
    assert len(dlq.entries(client.redis)) == len(poison)


def test_a_dead_letter_is_replayed_under_its_own_id(env, settings, client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    # A request admitted while nobody serves "add" ...
    handle = client.infer("add", {"x": X})
    assert client.redis.hexists(LEDGER_BODY, handle.id)
    # ... that a worker gave up on: taken from its queue and dead-lettered, as workers/tasks.py does after too
    # many deliveries (tests/integration/test_dead_letters.py covers that part).
    assert len(scripts.take_batch(client.redis, model_queue("add"), 10)) == 1
    dlq.record(client.redis, handle.id, "m.add", "no worker consuming m.add holds 'add'", deliveries=11)
    client.app.backend.mark_as_failure(handle.id, errors.NotLoaded("no worker consuming m.add holds 'add'"))

    fleet.worker(0, "w0@test")
    client.load("add").wait()
    shown = cli(env, "dlq", "show", handle.id, "--json")
    assert json.loads(shown.stdout)["deliveries"] == 11
    replayed = cli(env, "dlq", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert f"{handle.id}: replayed to m.add" in replayed.stdout
    assert dlq.entries(client.redis) == []
    # The same id, now answered by the replayed run (the first client was told NOT_LOADED; a fresh read by id
    # gets the new answer).
    from app.client import Client

    answer = Client(settings).app.AsyncResult(handle.id).get(timeout=90, disable_sync_subtasks=False)
    assert decode_tensor(answer["outputs"][0]).reshape(-1).tolist() == [1.0] * 4


def test_size_limits_fail_the_request_alone_and_results_expire(env, settings, client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    # Past 1 KiB a request is refused by the worker; past 512 bytes a result is dropped and replaced by an error.
    fleet.worker(0, "w0@test", MAAS_MAX_REQUEST_BYTES="1KiB", MAAS_MAX_RESULT_BYTES="512")
    client.load("add").wait()

    big = np.ones((100, 4), dtype=np.float32)  # about 1.6 KB as a JSON data list
    sent = client.app.send_task(  # around the client's own check, as a foreign producer would
        "maas.infer",
        args=["add", None, [{"name": "x", "shape": [100, 4], "datatype": "FP32", "data": big.ravel().tolist()}]],
        queue=model_queue("add"),
    )
    with pytest.raises(errors.RequestTooLarge, match="MAAS_MAX_REQUEST_BYTES"):
        sent.get(timeout=90, disable_sync_subtasks=False)

    rows = np.ones((30, 4), dtype=np.float32)  # a request under 1 KiB whose answer is over 512 bytes
    handle = client.infer("add", {"x": rows})
    with pytest.raises(errors.ResultTooLarge, match="MAAS_MAX_RESULT_BYTES"):
        handle.wait(timeout_s=90)
    stored = client.redis.get(result_key(handle.id))
    assert b"RESULT_TOO_LARGE" in stored and b'"outputs"' not in stored
    # Results are kept for MAAS_RESULT_EXPIRES_S, then Redis drops them.
    assert 0 < client.redis.ttl(result_key(handle.id)) <= settings.result_expires_s
    still_serves(client)

    # The client refuses an oversized request before it sends anything.
    from app.client import Client
    from app.settings import Settings

    small = Client(Settings.from_env({**env, "MAAS_MAX_REQUEST_BYTES": "1KiB"}))
    before = client.redis.hlen(LEDGER_BODY)
    with pytest.raises(errors.RequestTooLarge, match="nothing was sent"):
        small.infer("add", {"x": big})
    assert client.redis.hlen(LEDGER_BODY) == before


def test_a_request_not_yet_taken_can_be_cancelled(client, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    handle = client.infer("add", {"x": X})  # nobody serves "add": it waits in its queue
    assert handle.cancel() is True
    with pytest.raises(errors.Cancelled, match="cancelled by its client"):
        handle.wait(timeout_s=30)
    assert all(client.redis.llen(key) == 0 for key in priority_lists(model_queue("add")))
    assert not client.redis.hexists(LEDGER_BODY, handle.id)
    assert handle.cancel() is False  # gone already: nothing to take back

    # A wait that times out only stops waiting: the request stays queued until cancelled.
    other = client.infer("add", {"x": X})
    with pytest.raises(errors.RequestTimeout):
        other.wait(timeout_s=0.2)
    assert client.redis.hexists(LEDGER_BODY, other.id) and other.cancel() is True


def test_unknown_task_names_and_wrong_arguments_get_typed_errors(client, fleet, register, tmp_path):
    register("add", add_one(tmp_path / "add.onnx"))
    fleet.worker(0, "w0@test")
    client.load("add").wait()
    unknown = client.app.send_task("maas.nope", args=[1], queue=model_queue("add"))
    with pytest.raises(errors.MalformedMessage, match="no task named 'maas.nope'"):
        unknown.get(timeout=90, disable_sync_subtasks=False)
    for args, kwargs in [([1, 2, 3], {}), (["add"], {}), (["add", "v1", []], {}), (["add", None, []], {"x": 1})]:
        sent = client.app.send_task("maas.infer", args=args, kwargs=kwargs, queue=model_queue("add"))
        with pytest.raises(errors.MalformedMessage):
            sent.get(timeout=90, disable_sync_subtasks=False)
    still_serves(client)


def test_a_request_whose_admission_reply_was_lost_is_taken_back(client, register, tmp_path, monkeypatch):
    import redis as redis_lib

    from app import client as client_module

    register("add", add_one(tmp_path / "add.onnx"))
    real_admit = scripts.admit

    def admitted_then_lost(redis_client, admission, *settings):
        real_admit(redis_client, admission, *settings)  # the script ran on the real Redis ...
        raise redis_lib.ConnectionError("connection reset while reading the reply")  # ... and its reply was lost

    monkeypatch.setattr(client_module.scripts, "admit", admitted_then_lost)
    with pytest.raises(errors.BrokerUnavailable, match="not sent"):
        client.infer("add", {"x": X})
    # Nothing is left to run later: not in a queue, not in the ledger for a resend.
    assert all(client.redis.llen(key) == 0 for key in priority_lists(model_queue("add")))
    assert client.redis.hlen(LEDGER_BODY) == 0


def test_a_model_can_have_its_own_size_limits(env, client, register, configure, tmp_path, monkeypatch, capsys):
    from app.cli import main

    register("add", add_one(tmp_path / "add.onnx"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["model", "set", "add", "--max-request-bytes", "512", "--max-result-bytes", "1MiB"]) == 0
    assert "max_request=512 max_result=1MiB" in capsys.readouterr().out
    client.scheduler.invalidate("add")
    with pytest.raises(errors.RequestTooLarge, match="'add''s limit of 512"):
        client.infer("add", {"x": X})
    configure("add", max_request_bytes=None)  # back to the fleet's 64 MiB
    assert client.infer("add", {"x": X}).cancel() is True
